//! A TCP proxy that puts a network's faults between a host and its database server: latency,
//! dropped connections and a black hole (traffic silently lost, as when a link or a firewall
//! fails). Runs on the test's tokio runtime and forwards every connection it accepts to one
//! upstream address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The faults the proxy applies now, shared with every connection.
#[derive(Debug)]
struct Faults {
    /// Delay added to each direction, in microseconds.
    delay_us: AtomicU64,
    /// Whether traffic is being lost.
    black_hole: AtomicBool,
    /// Bumped to close every connection open at that moment.
    cut: watch::Sender<u64>,
    /// Connections accepted so far.
    accepted: AtomicU64,
}

/// A running proxy; stops (closing its connections) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 that forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy's port");
        let addr = listener.local_addr().expect("the proxy's address");
        let faults = Arc::new(Faults {
            delay_us: AtomicU64::new(0),
            black_hole: AtomicBool::new(false),
            cut: watch::channel(0).0,
            accepted: AtomicU64::new(0),
        });
        let shared = Arc::clone(&faults);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(client, upstream, Arc::clone(&shared)));
            }
        });
        Self {
            addr,
            faults,
            accept,
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` and the proxy's address: the URL a host uses to reach the server through it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Delays every byte by `one_way` in each direction (a round trip costs twice that).
    pub fn set_delay(&self, one_way: Duration) {
        self.faults
            .delay_us
            .store(one_way.as_micros() as u64, Ordering::Relaxed);
    }

    /// Closes every connection open now; later ones are forwarded as before.
    pub fn drop_connections(&self) {
        self.faults.cut.send_modify(|n| *n += 1);
    }

    /// Starts losing traffic: connections are still accepted (as a host behind a dead link sees
    /// a connect succeed to a local proxy), but nothing reaches the other side and nothing comes
    /// back.
    pub fn start_black_hole(&self) {
        self.faults.black_hole.store(true, Ordering::Relaxed);
    }

    /// Stops losing traffic for new connections. The connections that lost bytes stay silent
    /// for good, as connections do whose route or NAT entry died with the outage (no reset ever
    /// comes): only the client's own deadline gets it off them.
    pub fn end_black_hole(&self) {
        self.faults.black_hole.store(false, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.faults.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

/// Forwards one connection both ways until either side closes or the proxy cuts it.
async fn connection(client: TcpStream, upstream: SocketAddr, faults: Arc<Faults>) {
    let mut cut = faults.cut.subscribe();
    cut.mark_unchanged();
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let lost = Arc::new(AtomicBool::new(false));
    tokio::select! {
        _ = pump(client_read, server_write, Arc::clone(&faults), Arc::clone(&lost)) => {}
        _ = pump(server_read, client_write, Arc::clone(&faults), lost) => {}
        _ = cut.changed() => {}
    }
}

/// Copies `from` to `to`, each chunk held back by the delay of the moment it was read; or lost,
/// from the moment this connection (`lost`, shared by both directions) met the black hole.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Faults>,
    lost: Arc<AtomicBool>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if faults.black_hole.load(Ordering::Relaxed) {
                        lost.store(true, Ordering::Relaxed);
                    }
                    if lost.load(Ordering::Relaxed) {
                        continue;
                    }
                    let delay = Duration::from_micros(faults.delay_us.load(Ordering::Relaxed));
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    // The reader ending (the peer closed) lets the writer drain what is due, then close.
    tokio::join!(reader, writer);
}
