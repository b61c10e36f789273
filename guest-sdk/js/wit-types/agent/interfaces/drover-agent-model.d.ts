/// <reference path="./drover-agent-types.d.ts" />
declare module 'drover:agent/model@0.2.0' {
  /**
   * The model aliases this agent may use (its manifest's `models`).
   */
  export function aliases(): Array<string>;
  /**
   * Sends `request` to the model behind its alias and waits for the answer. Fails with
   * `ModelNotAllowed` (an alias the manifest does not list), `ModelUnavailable` (the provider
   * cannot be reached, timed out or failed), `ModelRateLimited` (still limited after the
   * host's retries) or `ModelBadResponse` (an answer the host cannot read).
   * 
   * A call the run's budgets (`max-turns`, `max-tokens`, `max-cost-usd`) do not allow ends the
   * run with status `quota`; it does not return.
   */
  export function complete(request: Request): Response;
  export type Json = import('drover:agent/types@0.2.0').Json;
  export type Failure = import('drover:agent/types@0.2.0').Failure;
  /**
   * Who says a message.
   * # Variants
   * 
   * ## `"system"`
   * 
   * Instructions for the model.
   * ## `"user"`
   * 
   * The user, or the job's input.
   * ## `"assistant"`
   * 
   * The model.
   * ## `"tool"`
   * 
   * The result of a tool call the model asked for.
   */
  export type Role = 'system' | 'user' | 'assistant' | 'tool';
  /**
   * A call of a tool the model asks for.
   */
  export interface ToolCall {
    /**
     * The provider's id of the call; the `tool` message that answers it repeats it.
     */
    id: string,
    /**
     * The tool's name, as in `tool-definition.name`.
     */
    name: string,
    /**
     * The arguments, as the model wrote them (JSON, though models do not always get it
     * right: check before use).
     */
    arguments: string,
  }
  /**
   * One message of a conversation.
   */
  export interface Message {
    /**
     * Who says it.
     */
    role: Role,
    /**
     * Its text. May be empty for an assistant message that only calls tools.
     */
    content: string,
    /**
     * The tools an assistant message asks to call (empty for the other roles).
     */
    toolCalls: Array<ToolCall>,
    /**
     * For a `tool` message: the id of the call it answers.
     */
    toolCallId?: string,
  }
  /**
   * A tool the model may ask to call.
   */
  export interface ToolDefinition {
    /**
     * Its name: 1 to 64 letters, digits, `-` or `_`.
     */
    name: string,
    /**
     * What it does, for the model.
     */
    description: string,
    /**
     * JSON Schema of its arguments (a JSON object).
     */
    parameters: Json,
  }
  /**
   * One request to a model.
   */
  export interface Request {
    /**
     * A model alias the agent's manifest lists (`models = ["cheap"]`).
     */
    model: string,
    /**
     * The conversation so far, oldest first.
     */
    messages: Array<Message>,
    /**
     * The tools the model may ask for.
     */
    tools: Array<ToolDefinition>,
    /**
     * Most tokens of output (default: the alias's `max-output-tokens`; never more).
     */
    maxOutputTokens?: number,
    /**
     * Sampling temperature, where the provider takes one.
     */
    temperature?: number,
    /**
     * Asks for a reply that is one JSON object (providers that support it).
     */
    jsonOutput: boolean,
  }
  /**
   * Why the model stopped.
   * # Variants
   * 
   * ## `"stop"`
   * 
   * A complete answer.
   * ## `"length"`
   * 
   * The output token limit cut it short.
   * ## `"tool-calls"`
   * 
   * It asks for tool calls.
   * ## `"content-filter"`
   * 
   * The provider filtered the content.
   * ## `"other"`
   * 
   * Anything else the provider said.
   */
  export type FinishReason = 'stop' | 'length' | 'tool-calls' | 'content-filter' | 'other';
  /**
   * Tokens one call used.
   */
  export interface Usage {
    /**
     * Tokens read (the prompt).
     */
    inputTokens: bigint,
    /**
     * Tokens written (the reply).
     */
    outputTokens: bigint,
  }
  /**
   * A model's answer.
   */
  export interface Response {
    /**
     * The reply: an assistant message, with text, tool calls, or both.
     */
    message: Message,
    /**
     * Why it stopped.
     */
    finishReason: FinishReason,
    /**
     * Tokens used by this call.
     */
    usage: Usage,
    /**
     * The cost of this call in US dollars, from the alias's prices.
     */
    costUsd: number,
    /**
     * The provider's name of the model that answered.
     */
    model: string,
  }
}
