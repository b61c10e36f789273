/// <reference path="./interfaces/drover-agent-agents.d.ts" />
/// <reference path="./interfaces/drover-agent-host.d.ts" />
/// <reference path="./interfaces/drover-agent-inbox.d.ts" />
/// <reference path="./interfaces/drover-agent-model.d.ts" />
/// <reference path="./interfaces/drover-agent-tools.d.ts" />
/// <reference path="./interfaces/drover-agent-types.d.ts" />
declare module 'drover:agent/agent@0.2.0' {
  export type Json = import('drover:agent/types@0.2.0').Json;
  export type AgentInfo = import('drover:agent/types@0.2.0').AgentInfo;
  export type Failure = import('drover:agent/types@0.2.0').Failure;
  export type * as DroverAgentAgents020 from 'drover:agent/agents@0.2.0'; // import drover:agent/agents@0.2.0
  export type * as DroverAgentHost020 from 'drover:agent/host@0.2.0'; // import drover:agent/host@0.2.0
  export type * as DroverAgentInbox020 from 'drover:agent/inbox@0.2.0'; // import drover:agent/inbox@0.2.0
  export type * as DroverAgentModel020 from 'drover:agent/model@0.2.0'; // import drover:agent/model@0.2.0
  export type * as DroverAgentTools020 from 'drover:agent/tools@0.2.0'; // import drover:agent/tools@0.2.0
  export type * as DroverAgentTypes020 from 'drover:agent/types@0.2.0'; // import drover:agent/types@0.2.0
  /**
  * Describes the agent. Called when the host loads the component, not per run.
  */
  export function describe(): AgentInfo;
  /**
  * Runs the agent on one job's input and returns its output.
  */
  export function run(input: Json): Json;
}
