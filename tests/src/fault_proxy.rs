//! A TCP proxy that can take a service's database connections away: every
//! open connection cut and new ones refused for a moment. It stands in for a
//! failover, a network blip or a pool that cannot connect, which a crash of
//! the whole server does not imitate: the other connections (and the other
//! services) go on, and the fault can end between one statement and the next.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards 127.0.0.1:`port()` to an upstream address until dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    /// New connections arriving before this instant are closed at once.
    refuse_until: Arc<Mutex<Instant>>,
    /// Bumped to cut every open connection.
    cuts: watch::Sender<u64>,
    accept_loop: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let refuse_until = Arc::new(Mutex::new(Instant::now()));
        let (cuts, _) = watch::channel(0u64);
        let accept_loop = tokio::spawn(accept(
            listener,
            upstream,
            Arc::clone(&refuse_until),
            cuts.clone(),
        ));
        Ok(Self {
            port,
            refuse_until,
            cuts,
            accept_loop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every connection now open and refuses new ones for `duration`.
    pub fn black_out(&self, duration: Duration) {
        *self.refuse_until.lock().expect("proxy lock") = Instant::now() + duration;
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        self.cuts.send_modify(|n| *n += 1);
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    refuse_until: Arc<Mutex<Instant>>,
    cuts: watch::Sender<u64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if Instant::now() < *refuse_until.lock().expect("proxy lock") {
            drop(client); // the client sees its connection closed during start-up
            continue;
        }
        let mut cut = cuts.subscribe();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return; // upstream down (a Postgres crash): the client sees a close
            };
            let mut client = client;
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.changed() => {}
            }
        });
    }
}
