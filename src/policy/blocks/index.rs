//! The live block list as hash maps: one lookup per scope on every request, whatever the number
//! of blocks (an attack that makes 50,000 blocks must not make every request slower).
//!
//! IP blocks are keyed by their network; a request's address is truncated to each prefix length
//! in use (usually one or two: /24 and /56 from the rules, /32 from a hand-made block) and looked
//! up. Expired blocks stop matching at once and are removed by [`Index::prune`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use jiff::Timestamp;

use super::{Block, BlockScope, Blocked, Who};

#[derive(Debug, Default)]
pub(super) struct Index {
    accounts: HashMap<String, Block>,
    orgs: HashMap<String, Block>,
    ips: HashMap<IpNet, Block>,
    /// Prefix lengths in use, with how many blocks use each (v4 and v6 apart).
    v4_lens: BTreeMap<u8, usize>,
    v6_lens: BTreeMap<u8, usize>,
}

impl Index {
    pub fn from_blocks(blocks: impl IntoIterator<Item = Block>) -> Self {
        let mut ix = Self::default();
        for b in blocks {
            ix.insert(b);
        }
        ix
    }

    /// Put `b` in place of the block on its scope and key; the block that was there. An IP
    /// block whose key is not a CIDR is refused (`Some(b)` back unchanged is not possible:
    /// callers normalise keys first), so it is dropped with a warning.
    pub fn insert(&mut self, b: Block) -> Option<Block> {
        match b.scope {
            BlockScope::Account => self.accounts.insert(b.key.clone(), b),
            BlockScope::Org => self.orgs.insert(b.key.clone(), b),
            BlockScope::Ip => {
                let Ok(net) = b.key.parse::<IpNet>() else {
                    tracing::warn!(key = ?b.key, "ignoring an IP block whose key is not a CIDR");
                    return None;
                };
                let net = net.trunc();
                let old = self.ips.insert(net, b);
                if old.is_none() {
                    *self.lens(net).entry(net.prefix_len()).or_insert(0) += 1;
                }
                old
            }
        }
    }

    pub fn remove(&mut self, scope: BlockScope, key: &str) -> Option<Block> {
        match scope {
            BlockScope::Account => self.accounts.remove(key),
            BlockScope::Org => self.orgs.remove(key),
            BlockScope::Ip => {
                let net = key.parse::<IpNet>().ok()?.trunc();
                let old = self.ips.remove(&net)?;
                let lens = self.lens(net);
                if let Some(n) = lens.get_mut(&net.prefix_len()) {
                    *n -= 1;
                    if *n == 0 {
                        lens.remove(&net.prefix_len());
                    }
                }
                Some(old)
            }
        }
    }

    fn lens(&mut self, net: IpNet) -> &mut BTreeMap<u8, usize> {
        match net {
            IpNet::V4(_) => &mut self.v4_lens,
            IpNet::V6(_) => &mut self.v6_lens,
        }
    }

    /// The block that applies to `who` now, if any: account, then organisation, then IP.
    pub fn check(&self, who: &Who<'_>, now: Timestamp) -> Option<Blocked> {
        let live = |b: &Block| b.active(now).then_some(Blocked { scope: b.scope, until: b.until });
        if let Some(b) = who.account.and_then(|a| self.accounts.get(a)).and_then(live) {
            return Some(b);
        }
        if let Some(b) = who.org.and_then(|o| self.orgs.get(o)).and_then(live) {
            return Some(b);
        }
        if self.ips.is_empty() {
            return None;
        }
        let lens = match who.ip {
            IpAddr::V4(_) => &self.v4_lens,
            IpAddr::V6(_) => &self.v6_lens,
        };
        lens.keys().find_map(|len| {
            let net = IpNet::new(who.ip, *len).ok()?.trunc();
            self.ips.get(&net).and_then(live)
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Block> {
        self.accounts.values().chain(self.orgs.values()).chain(self.ips.values())
    }

    /// Drop expired blocks; how many.
    pub fn prune(&mut self, now: Timestamp) -> usize {
        let expired: Vec<(BlockScope, String)> =
            self.iter().filter(|b| !b.active(now)).map(|b| (b.scope, b.key.clone())).collect();
        for (scope, key) in &expired {
            self.remove(*scope, key);
        }
        expired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(scope: BlockScope, key: &str, until: Option<&str>) -> Block {
        Block {
            scope,
            key: key.into(),
            reason: "r".into(),
            source: "manual".into(),
            created: "2026-11-24T10:00:00Z".parse().unwrap(),
            until: until.map(|u| u.parse().unwrap()),
        }
    }

    fn who<'a>(account: Option<&'a str>, org: Option<&'a str>, ip: &str) -> Who<'a> {
        let ip: IpAddr = ip.parse().unwrap();
        Who { account, org, ip, ip_prefix: IpNet::new(ip, 24).unwrap_or_else(|_| IpNet::new(ip, 56).unwrap()).trunc() }
    }

    #[test]
    fn lookups_find_each_scope_and_every_prefix_length_in_use() {
        let now: Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        let mut ix = Index::default();
        ix.insert(block(BlockScope::Account, "acct-1", None));
        ix.insert(block(BlockScope::Org, "12345678", None));
        ix.insert(block(BlockScope::Ip, "203.0.113.0/24", None));
        ix.insert(block(BlockScope::Ip, "198.51.100.7/32", None));
        ix.insert(block(BlockScope::Ip, "2001:db8:1:100::/56", None));
        ix.insert(block(BlockScope::Account, "old", Some("2026-11-24T11:00:00Z")));
        let scope = |ix: &Index, w: Who<'_>| ix.check(&w, now).map(|b| b.scope);
        assert_eq!(scope(&ix, who(Some("acct-1"), None, "192.0.2.1")), Some(BlockScope::Account));
        assert_eq!(scope(&ix, who(Some("x"), Some("12345678"), "192.0.2.1")), Some(BlockScope::Org));
        assert_eq!(scope(&ix, who(Some("x"), None, "203.0.113.200")), Some(BlockScope::Ip));
        assert_eq!(scope(&ix, who(Some("x"), None, "198.51.100.7")), Some(BlockScope::Ip));
        assert_eq!(scope(&ix, who(Some("x"), None, "198.51.100.8")), None);
        assert_eq!(scope(&ix, who(Some("x"), None, "2001:db8:1:1ff::9")), Some(BlockScope::Ip));
        assert_eq!(scope(&ix, who(Some("x"), None, "2001:db8:1:200::9")), None);
        assert_eq!(scope(&ix, who(Some("old"), None, "192.0.2.1")), None, "expired");
        assert_eq!(ix.prune(now), 1);
        assert!(ix.remove(BlockScope::Ip, "198.51.100.7/32").is_some());
        assert_eq!(scope(&ix, who(Some("x"), None, "198.51.100.7")), None);
        assert!(ix.v4_lens.keys().eq([24u8].iter()), "{:?}", ix.v4_lens);
    }
}
