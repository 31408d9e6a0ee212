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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// An upstream that echoes what it reads.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    /// Whether a round trip through `stream` still works.
    async fn echoes(stream: &mut TcpStream) -> bool {
        if stream.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buffer = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut buffer)).await,
            Ok(Ok(_))
        ) && &buffer == b"ping"
    }

    #[tokio::test]
    async fn a_blackout_cuts_open_connections_and_refuses_new_ones_until_it_ends() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let address = format!("127.0.0.1:{}", proxy.port());
        let mut open = TcpStream::connect(&address).await.unwrap();
        assert!(echoes(&mut open).await, "the proxy forwards");

        proxy.black_out(Duration::from_millis(400));
        assert!(
            !echoes(&mut open).await,
            "an open connection survived the cut"
        );
        let mut during = TcpStream::connect(&address).await.unwrap();
        assert!(
            !echoes(&mut during).await,
            "a new connection was let through"
        );

        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut after = TcpStream::connect(&address).await.unwrap();
        assert!(
            echoes(&mut after).await,
            "still refusing after the blackout"
        );
    }
}
