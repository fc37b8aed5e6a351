//! Where a web process really listens. kiln gives it `PORT` and expects 127.0.0.1:$PORT, but
//! the Procfile lines Heroku users bring take only the port: `gunicorn app:app` binds
//! 0.0.0.0:$PORT when `PORT` is set, and node's `listen(process.env.PORT)` binds `::`. Such an
//! app answers anyone who reaches the machine, past the front door (its TLS, its routing), and
//! nothing fails to tell. So a deploy and `kiln ps` look at the machine's listening sockets
//! (/proc/net/tcp and tcp6, read with the `procfs` crate) and warn.

use std::net::{IpAddr, SocketAddr};

use procfs::net::TcpState;

/// The addresses other than loopback on which something listens on TCP `port` of this machine.
/// Best effort: empty when /proc cannot be read.
pub fn exposed(port: u16) -> Vec<SocketAddr> {
    let listening = [procfs::net::tcp(), procfs::net::tcp6()]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.state == TcpState::Listen)
        .map(|entry| entry.local_address);
    beyond_loopback(listening, port)
}

fn beyond_loopback(listening: impl IntoIterator<Item = SocketAddr>, port: u16) -> Vec<SocketAddr> {
    let mut found: Vec<SocketAddr> = listening
        .into_iter()
        .filter(|address| address.port() == port && !loopback(address.ip()))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// 127.0.0.0/8, ::1, and 127.x.x.x mapped into IPv6.
fn loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The warning for web instance `instance` (`web.1`) listening on `addresses` (from
/// [`exposed`]); None when it listens on loopback only.
pub fn warning(instance: &str, addresses: &[SocketAddr]) -> Option<String> {
    if addresses.is_empty() {
        return None;
    }
    let shown: Vec<String> = addresses
        .iter()
        .map(|address| {
            if address.ip().is_unspecified() {
                format!("{address} (every interface)")
            } else {
                address.to_string()
            }
        })
        .collect();
    Some(format!(
        "`{instance}` listens on {}, not only on 127.0.0.1: it answers whoever reaches this machine, past the front door; bind 127.0.0.1:$PORT (gunicorn `--bind 127.0.0.1:$PORT`, node `listen(process.env.PORT, '127.0.0.1')`), or take kiln's socket with kiln.yml `socket_activation: true`",
        shown.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(addresses: &[&str]) -> Vec<SocketAddr> {
        addresses
            .iter()
            .map(|a| a.parse().expect("a socket address"))
            .collect()
    }

    /// Regression: `web: gunicorn app:app`, the Procfile line Heroku's docs give, deployed and
    /// served on 0.0.0.0:$PORT without a word. (The end-to-end tests never bind beyond
    /// loopback, so the addresses are given here.)
    #[test]
    fn regression_an_app_listening_on_every_interface_is_warned_about() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["127.0.0.1:20000"], &[]),
            (&["127.0.1.1:20000", "[::1]:20000"], &[]),
            (&["[::ffff:127.0.0.1]:20000"], &[]),
            (&["0.0.0.0:20000"], &["0.0.0.0:20000"]),
            (
                &["[::]:20000", "0.0.0.0:20000"],
                &["0.0.0.0:20000", "[::]:20000"],
            ),
            (
                &["192.0.2.7:20000", "127.0.0.1:20000"],
                &["192.0.2.7:20000"],
            ),
            // Another port is someone else's.
            (&["0.0.0.0:20001", "[::]:8080"], &[]),
            (&["0.0.0.0:20000", "0.0.0.0:20000"], &["0.0.0.0:20000"]),
        ];
        for (listening, expected) in cases {
            assert_eq!(
                beyond_loopback(parse(listening), 20000),
                parse(expected),
                "{listening:?}"
            );
        }
    }

    #[test]
    fn the_warning_names_the_instance_the_addresses_and_what_to_do() {
        assert_eq!(warning("web.1", &[]), None);
        let text = warning("web.2", &parse(&["0.0.0.0:20001", "[::]:20001"])).unwrap();
        assert!(
            text.starts_with(
                "`web.2` listens on 0.0.0.0:20001 (every interface), [::]:20001 (every interface), not only on 127.0.0.1"
            ),
            "{text}"
        );
        assert!(text.contains("--bind 127.0.0.1:$PORT"), "{text}");
        assert!(text.contains("socket_activation: true"), "{text}");
    }

    #[test]
    fn this_machine_reads_its_own_listening_sockets() {
        // A loopback listener is found in /proc, and not reported.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let listening: Vec<SocketAddr> = procfs::net::tcp()
            .expect("/proc/net/tcp")
            .into_iter()
            .filter(|e| e.state == TcpState::Listen)
            .map(|e| e.local_address)
            .collect();
        assert!(
            listening.contains(&SocketAddr::from(([127, 0, 0, 1], port))),
            "{listening:?}"
        );
        assert_eq!(exposed(port), vec![]);
    }
}
