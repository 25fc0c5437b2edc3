//! Network namespaces on one bridge, for partition tests: each namespace has one address on a private /24, a
//! veth to the bridge, and the bridge an address in the root namespace, so this process (and the functions it
//! spawns) reach every namespace; taking one veth down cuts that namespace off everything else.
//!
//! Made with `ip` (iproute2) as root; removed on drop, a panicking test included. A test process killed outright
//! leaves them behind: they are named `jf<pid>…`, and `ip netns list` / `ip link` show them.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Error;

/// Namespaces `0..n` behind one bridge; see the module docs.
pub(crate) struct Netns {
    prefix: String,
    subnet: [u8; 3],
    count: usize,
}

impl Netns {
    /// Makes `count` namespaces, each with `lo` up and `10.231.<k>.<i + 2>/24` on its veth, and the bridge
    /// with `.1`. Whatever was made is removed again if a step fails.
    pub(crate) fn create(count: usize) -> Result<Self, Error> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names hold at most 15 bytes: `jf` + 5 digits + 1 + `h9`.
        let prefix = format!("jf{:05}{}", pid % 100_000, n % 10);
        let third = u8::try_from((pid + n * 7) % 250).unwrap_or(0) + 1;
        let net = Self {
            prefix,
            subnet: [10, 231, third],
            count: 0,
        };
        net.build(count)
    }

    fn build(mut self, count: usize) -> Result<Self, Error> {
        let bridge = self.bridge();
        let [a, b, c] = self.subnet;
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        // From here on, Drop removes what exists.
        ip(&["addr", "add", &format!("{a}.{b}.{c}.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..count {
            let ns = self.namespace(i);
            ip(&["netns", "add", &ns])?;
            self.count = i + 1;
            let (host, inner) = (self.host_veth(i), format!("{}n{i}", self.prefix));
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &bridge])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        }
        Ok(self)
    }

    /// The name of namespace `i`, for `ip netns exec`.
    pub(crate) fn namespace(&self, i: usize) -> String {
        format!("{}s{i}", self.prefix)
    }

    /// Namespace `i`'s address.
    pub(crate) fn addr(&self, i: usize) -> IpAddr {
        let [a, b, c] = self.subnet;
        let host = u8::try_from(i + 2).expect("fewer than 250 namespaces");
        IpAddr::V4(Ipv4Addr::new(a, b, c, host))
    }

    /// Takes namespace `i`'s link to the bridge down (`up = false`) or up again.
    pub(crate) fn set_link(&self, i: usize, up: bool) -> Result<(), Error> {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.host_veth(i), state])
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn host_veth(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for i in 0..self.count {
            // Deleting one end of a veth deletes both; the namespace goes once nothing runs in it.
            let _ = ip(&["link", "del", &self.host_veth(i)]);
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

fn ip(args: &[&str]) -> Result<(), Error> {
    let output = Command::new("ip").args(args).output().map_err(|e| {
        Error::new(format!(
            "running `ip {}`: {e} (iproute2 is needed for network namespaces)",
            args.join(" ")
        ))
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "`ip {}` failed ({}): {} (network namespaces need root)",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
