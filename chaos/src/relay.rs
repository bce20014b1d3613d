//! A user-space UDP relay in front of every node's QUIC port (this kernel has no netem). Node X
//! listens on its mesh port P_X and advertises its relay port R_X. A datagram arriving at R_X
//! from P_Y (node Y to node X) is sent on to P_X *from R_Y*, so every node sees each peer at the
//! address the membership gives it (joch refuses a peer that speaks from elsewhere). While a link
//! fault is on, datagrams to or from its nodes are dropped, delayed (and so reordered) or
//! duplicated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::net::UdpSocket;

/// One link fault's effect.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkFault {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Added delay, uniformly in this range (ms).
    pub delay_ms: (u64, u64),
    /// Probability a datagram is sent twice.
    pub dup: f64,
}

/// The faults in force on one node's links, by the nemesis fault that set them (faults overlap).
#[derive(Default)]
pub struct Faults(Mutex<HashMap<u64, LinkFault>>);

impl Faults {
    pub fn set(&self, fault: u64, f: LinkFault) {
        self.0.lock().insert(fault, f);
    }

    pub fn clear(&self, fault: u64) {
        self.0.lock().remove(&fault);
    }

    pub fn clear_all(&self) {
        self.0.lock().clear();
    }

    /// The combined effect: the worst loss and duplication, the delays added up.
    fn add_to(&self, a: LinkFault) -> LinkFault {
        self.0.lock().values().fold(a, |a, f| LinkFault {
            loss: a.loss.max(f.loss),
            delay_ms: (a.delay_ms.0 + f.delay_ms.0, a.delay_ms.1 + f.delay_ms.1),
            dup: a.dup.max(f.dup),
        })
    }
}

/// What happens to one datagram under `f`: the delays of its copies (none: dropped).
fn fate(f: LinkFault) -> Vec<Duration> {
    let mut rng = rand::rng();
    if f.loss > 0.0 && rng.random_bool(f.loss.min(1.0)) {
        return Vec::new();
    }
    let copies = if f.dup > 0.0 && rng.random_bool(f.dup.min(1.0)) { 2 } else { 1 };
    (0..copies)
        .map(|_| {
            let (lo, hi) = f.delay_ms;
            Duration::from_millis(if hi > lo { rng.random_range(lo..=hi) } else { lo })
        })
        .collect()
}

/// Starts the relays of nodes given as (relay port, mesh port), in node order; returns each
/// node's link faults.
pub async fn start(nodes: &[(u16, u16)]) -> anyhow::Result<Vec<Arc<Faults>>> {
    let mut sockets = Vec::new();
    for (relay, _) in nodes {
        sockets.push(Arc::new(UdpSocket::bind(("127.0.0.1", *relay)).await?));
    }
    let faults: Vec<Arc<Faults>> = nodes.iter().map(|_| Arc::new(Faults::default())).collect();
    // Which node a datagram comes from, by its source (mesh) port.
    let by_mesh: Arc<HashMap<u16, usize>> = Arc::new(nodes.iter().enumerate().map(|(i, (_, m))| (*m, i)).collect());
    for (x, (_, mesh_x)) in nodes.iter().enumerate() {
        let to: SocketAddr = ([127, 0, 0, 1], *mesh_x).into();
        let (sockets, faults, by_mesh) = (sockets.clone(), faults.clone(), by_mesh.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = sockets[x].recv_from(&mut buf).await else { continue };
                // Only the cluster's own nodes speak through the relays.
                let Some(&y) = by_mesh.get(&from.port()) else { continue };
                let f = faults[y].add_to(faults[x].add_to(LinkFault::default()));
                for delay in fate(f) {
                    let sock = sockets[y].clone();
                    if delay.is_zero() {
                        let _ = sock.send_to(&buf[..n], to).await;
                    } else {
                        let data = buf[..n].to_vec();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = sock.send_to(&data, to).await;
                        });
                    }
                }
            }
        });
    }
    Ok(faults)
}
