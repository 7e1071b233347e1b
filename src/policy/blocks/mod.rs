//! Blocks: accounts, organisations and IP prefixes refused with 403, by hand or by rule.
//!
//! Operators block and unblock through the admin API; rules in config block automatically (a
//! day budget used up → block for 24 h; repeated deep-paging attempts → block), and a repeat
//! offender's block lasts longer each time (`escalation`). Blocks survive restarts ([`disk`]): a
//! block made or removed through the admin API is one line in a journal, on disk before the call
//! answers, whatever the size of the list; one made by a rule on the request path reaches the
//! snapshot with the next [`Blocks::maintain`] (once a second), so a flood of blocks costs one
//! write a second, not one fsync'd rewrite each. Expired blocks stop applying at once and are
//! pruned every second,
//! file or no file. The offence history (for escalation) is kept with them. Checking a request
//! is a hash lookup per scope ([`index`]).

mod disk;
mod index;

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use disk::{Change, Disk};
use index::Index;

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::invalid::Invalid;

/// What a block applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockScope {
    Account,
    Org,
    /// An IP prefix in CIDR form (a single address is a /32 or /128).
    Ip,
}

impl BlockScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Org => "org",
            Self::Ip => "ip",
        }
    }

    /// `key` as blocks of this scope store it: an IP block's CIDR truncated to its network.
    pub fn stored_key(self, key: &str) -> String {
        match self {
            Self::Ip => key.parse::<IpNet>().map_or_else(|_| key.to_string(), |n| n.trunc().to_string()),
            _ => key.to_string(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "account" => Some(Self::Account),
            "org" => Some(Self::Org),
            "ip" => Some(Self::Ip),
            _ => None,
        }
    }
}

/// One block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub scope: BlockScope,
    /// Account id, KvK number, or CIDR.
    pub key: String,
    pub reason: String,
    /// `manual` or `rule:<name>`.
    pub source: String,
    pub created: Timestamp,
    /// `None`: until unblocked.
    pub until: Option<Timestamp>,
}

impl Block {
    fn active(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

/// The file format.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BlockFile {
    blocks: Vec<Block>,
    /// Offences per `scope:key`, for escalation.
    offences: BTreeMap<String, Offence>,
    /// The last journal line this snapshot includes ([`disk`]).
    #[serde(default)]
    journal_seq: u64,
}

/// A subject's offences: how many, and the last one (forgotten `max_duration` after it, so the
/// history stays bounded after an attack that made many blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SavedOffence")]
struct Offence {
    count: u32,
    /// `None` for an entry written before the time was kept (kept until the next offence).
    last: Option<Timestamp>,
}

/// What a block file holds: `{count, last}`, or a bare count from earlier versions.
#[derive(Deserialize)]
#[serde(untagged)]
enum SavedOffence {
    Count(u32),
    Full { count: u32, last: Option<Timestamp> },
}

impl From<SavedOffence> for Offence {
    fn from(s: SavedOffence) -> Self {
        match s {
            SavedOffence::Count(count) => Offence { count, last: None },
            SavedOffence::Full { count, last } => Offence { count, last },
        }
    }
}

/// Raw `blocks:` config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawBlocks {
    /// Where blocks are persisted; `null` keeps them in memory only (lost on restart).
    pub file: Option<String>,
    pub rules: Vec<RawRule>,
    /// Each repeat offence multiplies the rule's duration by this factor…
    pub escalation_factor: u32,
    /// …up to this.
    pub max_duration: String,
}

impl Default for RawBlocks {
    fn default() -> Self {
        Self {
            file: Some("state/blocks.json".into()),
            rules: vec![
                RawRule {
                    name: "day-budget-exhausted".into(),
                    on: "quota".into(),
                    scope: Some("account".into()),
                    horizon: Some("day".into()),
                    threshold: 1,
                    within: "24h".into(),
                    block: "account".into(),
                    duration: "24h".into(),
                },
                // The same at the organisation and IP-prefix scopes. A fixed day horizon already
                // caps the day; the block carries the stop past the window's end (the next day's
                // budget is not handed to whoever just used up today's), escalating on repeat,
                // and it still caps a day horizon that ops made continuous (a rate, up to
                // B + B·t/W over a span t). Blocking the /24 stops everyone behind it, who share
                // its budget anyway. Ops who prefer a fresh budget each day remove these rules.
                RawRule {
                    name: "org-day-budget-exhausted".into(),
                    on: "quota".into(),
                    scope: Some("org".into()),
                    horizon: Some("day".into()),
                    threshold: 1,
                    within: "24h".into(),
                    block: "org".into(),
                    duration: "24h".into(),
                },
                RawRule {
                    name: "ip-day-budget-exhausted".into(),
                    on: "quota".into(),
                    scope: Some("ip".into()),
                    horizon: Some("day".into()),
                    threshold: 1,
                    within: "24h".into(),
                    block: "ip".into(),
                    duration: "24h".into(),
                },
                RawRule {
                    name: "deep-paging".into(),
                    on: "deep_paging".into(),
                    scope: None,
                    horizon: None,
                    threshold: 5,
                    within: "1h".into(),
                    block: "account".into(),
                    duration: "24h".into(),
                },
            ],
            escalation_factor: 2,
            max_duration: "30d".into(),
        }
    }
}

/// An automatic blocking rule.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(default)]
pub struct RawRule {
    pub name: String,
    /// `quota` (a quota rejection; narrowed by `scope`/`horizon`) or `deep_paging`.
    pub on: String,
    pub scope: Option<String>,
    pub horizon: Option<String>,
    /// Events needed within `within` to fire.
    pub threshold: u32,
    pub within: String,
    /// What to block: `account`, `org` or `ip` (the client's IP prefix as the quota scope uses it).
    pub block: String,
    pub duration: String,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub on: Event,
    pub scope: Option<String>,
    pub horizon: Option<String>,
    pub threshold: u32,
    pub within: Duration,
    pub block: BlockScope,
    pub duration: Duration,
}

/// What can trigger a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Quota,
    DeepPaging,
}

/// Validated `blocks:` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlocksConfig {
    pub file: Option<PathBuf>,
    pub rules: Vec<Rule>,
    pub escalation_factor: u32,
    pub max_duration: Duration,
}

impl BlocksConfig {
    /// The longest `within` of any rule: how long rule events are worth keeping.
    pub fn longest_window(&self) -> Duration {
        self.rules.iter().map(|r| r.within).max().unwrap_or_default()
    }

    /// Every error with its key path relative to `blocks`. `base` resolves a relative file.
    pub fn from_raw(raw: &RawBlocks, base: &Path) -> Result<Self, Invalid> {
        let mut e = Invalid::new();
        let mut rules = Vec::new();
        for (i, r) in raw.rules.iter().enumerate() {
            let rule = e.under(&format!("rules[{i}]"), |e| Rule::from_raw(r, e));
            rules.push(rule);
        }
        if raw.escalation_factor == 0 {
            e.push("escalation_factor", "must be at least 1");
        }
        let max_duration = e.positive_duration("max_duration", &raw.max_duration).unwrap_or_default();
        let file = raw.file.as_ref().map(|f| if Path::new(f).is_absolute() { PathBuf::from(f) } else { base.join(f) });
        e.into_result(Self { file, rules, escalation_factor: raw.escalation_factor, max_duration })
    }
}

impl Rule {
    /// One rule; errors with paths relative to the rule.
    fn from_raw(r: &RawRule, e: &mut Invalid) -> Rule {
        let on = match r.on.as_str() {
            "quota" => Event::Quota,
            "deep_paging" => Event::DeepPaging,
            o => {
                e.push("on", format!("expected quota or deep_paging, got {o:?}"));
                Event::Quota
            }
        };
        let block = BlockScope::parse(&r.block).unwrap_or_else(|| {
            e.push("block", format!("expected account, org or ip, got {:?}", r.block));
            BlockScope::Account
        });
        if r.name.is_empty() {
            e.push("name", "a rule needs a name");
        }
        // A typo here would silently disable the rule: the scope is a closed set (the horizon
        // is checked against the quota section by `config`).
        if let Some(s) = &r.scope {
            if !crate::quota::Scope::ALL.iter().any(|x| x.as_str() == s) {
                e.push("scope", format!("expected account, org, ip, country or global, got {s:?}"));
            }
        }
        if on == Event::DeepPaging && (r.scope.is_some() || r.horizon.is_some()) {
            e.push("scope", "scope and horizon narrow quota rules only");
        }
        if r.threshold == 0 {
            e.push("threshold", "must be at least 1");
        }
        Rule {
            name: r.name.clone(),
            on,
            scope: r.scope.clone(),
            horizon: r.horizon.clone(),
            threshold: r.threshold,
            within: e.positive_duration("within", &r.within).unwrap_or_default(),
            block,
            duration: e.positive_duration("duration", &r.duration).unwrap_or_default(),
        }
    }
}

/// The live block list. Cheap to check on every request (read lock, a hash lookup per scope).
#[derive(Debug)]
pub struct Blocks {
    state: RwLock<State>,
    /// The snapshot and journal; held across an admin change and its journal line, so the
    /// journal's order is the order the changes took effect.
    disk: Mutex<Disk>,
    /// Recent events per (rule, subject), for thresholds; pruned by [`Blocks::maintain`].
    /// Sharded: rejections of different subjects do not queue behind one lock.
    events: DashMap<(String, String), VecDeque<Timestamp>>,
    /// Changes not on disk yet (rule-made blocks, pruning): written by [`Blocks::maintain`].
    dirty: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    index: Index,
    /// Offences per `scope:key`, for escalation.
    offences: BTreeMap<String, Offence>,
}

/// Why a request is blocked.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub scope: BlockScope,
    pub until: Option<Timestamp>,
}

/// The subject of a request, as blocks see it.
pub struct Who<'a> {
    pub account: Option<&'a str>,
    pub org: Option<&'a str>,
    pub ip: IpAddr,
    /// The client's IP prefix as the quota scope computes it (what an `ip` rule blocks).
    pub ip_prefix: IpNet,
}

impl Blocks {
    /// Load the persisted list: the snapshot, then the journal's changes after it (a missing
    /// file is an empty list). Writes nothing; a replayed journal is folded into a new snapshot
    /// by the next [`Blocks::maintain`].
    ///
    /// # Errors
    /// A file exists but cannot be read or parsed: refusing to start beats silently
    /// forgetting every block.
    pub fn open(file: Option<PathBuf>) -> anyhow::Result<Arc<Self>> {
        let (disk, saved, changes) = Disk::open(file)?;
        let mut index = Index::from_blocks(saved.blocks);
        for c in &changes {
            match c {
                Change::Add(b) => {
                    index.remove(b.scope, &b.key);
                    index.insert(b.clone());
                }
                Change::Remove { scope, key } => {
                    index.remove(*scope, key);
                }
            }
        }
        Ok(Arc::new(Self {
            state: RwLock::new(State { index, offences: saved.offences }),
            disk: Mutex::new(disk),
            events: DashMap::new(),
            dirty: AtomicBool::new(false),
        }))
    }

    /// Switch to another file (a reload that names a new one); the current list is written there.
    ///
    /// # Errors
    /// The new file cannot be written: the list stays with the old file.
    pub fn set_file(&self, file: Option<PathBuf>) -> anyhow::Result<()> {
        let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        if disk.path() == file.as_deref() {
            return Ok(());
        }
        disk.move_to(file, self.saved(Timestamp::UNIX_EPOCH))
    }

    /// Is this request's account, organisation or IP blocked now?
    pub fn check(&self, who: &Who<'_>, now: Timestamp) -> Option<Blocked> {
        self.state.read().unwrap_or_else(PoisonError::into_inner).index.check(who, now)
    }

    /// Active blocks, by scope and key.
    pub fn list(&self, now: Timestamp) -> Vec<Block> {
        let mut v: Vec<Block> = self.read().index.iter().filter(|b| b.active(now)).cloned().collect();
        v.sort_by(|a, b| (a.scope, &a.key).cmp(&(b.scope, &b.key)));
        v
    }

    /// Active blocks per scope (for the gauge).
    pub fn counts(&self, now: Timestamp) -> [(BlockScope, i64); 3] {
        let mut c = [(BlockScope::Account, 0), (BlockScope::Org, 0), (BlockScope::Ip, 0)];
        for b in self.read().index.iter().filter(|b| b.active(now)) {
            c[b.scope as usize].1 += 1;
        }
        c
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Once a second (housekeeping): drop expired blocks and stale rule events, and write what
    /// changed since the last write (rule-made blocks). Blocking I/O: run it off the runtime.
    ///
    /// # Errors
    /// The file cannot be written (retried on the next call).
    pub fn maintain(&self, now: Timestamp, events_within: Duration, offence_memory: Duration) -> anyhow::Result<()> {
        let forget = now - jiff::SignedDuration::try_from(offence_memory).unwrap_or_default();
        let pruned = {
            let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
            let before = st.offences.len();
            st.offences.retain(|_, o| o.last.is_none_or(|t| t >= forget));
            st.index.prune(now) + before - st.offences.len()
        };
        if pruned > 0 {
            self.dirty.store(true, Ordering::Release);
        }
        let oldest = now - jiff::SignedDuration::try_from(events_within).unwrap_or_default();
        self.events.retain(|_, q| q.back().is_some_and(|t| *t >= oldest));
        if self.dirty.swap(false, Ordering::AcqRel)
            || self.disk.lock().unwrap_or_else(PoisonError::into_inner).wants_snapshot()
        {
            if let Err(e) = self.persist(now) {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Add (or replace) a block; it is in the journal on disk when this returns. Blocking I/O.
    ///
    /// # Errors
    /// A key that does not fit its scope (e.g. not a CIDR for `ip`), or the journal cannot be
    /// written (the block is not made).
    pub fn add(&self, mut b: Block) -> anyhow::Result<Block> {
        if b.scope == BlockScope::Ip {
            let net: IpNet = match b.key.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => b
                    .key
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| anyhow::anyhow!("not an IP or CIDR: {:?}", b.key))?,
            };
            b.key = net.trunc().to_string();
        }
        if b.key.is_empty() {
            anyhow::bail!("empty key");
        }
        let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        let replaced = self.swap(b.scope, &b.key, Some(b.clone()));
        if let Err(e) = disk.append(&Change::Add(b.clone())) {
            // Not persisted, not active: an error must mean the block did not happen.
            self.swap(b.scope, &b.key, replaced);
            return Err(e);
        }
        drop(disk);
        Self::log_block(&b);
        Ok(b)
    }

    fn log_block(b: &Block) {
        tracing::warn!(scope = b.scope.as_str(), key = ?b.key, reason = ?b.reason, until = ?b.until, source = ?b.source, "blocked");
    }

    /// Replace the list with `shared` (the replicas' common list, from Redis), persisting when
    /// it changed. Expired entries are dropped.
    pub fn replace(&self, mut shared: Vec<Block>, now: Timestamp) -> anyhow::Result<()> {
        // Blocks made here that have not reached Redis yet come laid over `shared` by the
        // caller (`share::Outbox::read`), so nothing local is lost here.
        shared.retain(|b| b.active(now));
        shared.sort_by(|a, b| (a.scope, &a.key).cmp(&(b.scope, &b.key)));
        shared.dedup_by(|a, b| a.scope == b.scope && a.key == b.key);
        let changed = {
            let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
            let mut current: Vec<&Block> = st.index.iter().filter(|b| b.active(now)).collect();
            current.sort_by(|a, b| (a.scope, &a.key).cmp(&(b.scope, &b.key)));
            if current.len() == shared.len() && current.iter().zip(&shared).all(|(a, b)| *a == b) {
                false
            } else {
                st.index = Index::from_blocks(shared);
                true
            }
        };
        if changed {
            self.persist(now)?;
        }
        Ok(())
    }

    /// Remove a block; `false` when there was none.
    pub fn remove(&self, scope: BlockScope, key: &str) -> anyhow::Result<bool> {
        let key = scope.stored_key(key);
        let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(removed) = self.swap(scope, &key, None) else { return Ok(false) };
        if let Err(e) = disk.append(&Change::Remove { scope, key: key.clone() }) {
            self.swap(scope, &key, Some(removed)); // still blocked: the unblock did not happen
            return Err(e);
        }
        drop(disk);
        tracing::warn!(scope = scope.as_str(), key = ?key, "unblocked");
        Ok(true)
    }

    /// Feed an event to the automatic rules; returns the blocks it caused.
    pub fn observe(
        &self,
        cfg: &BlocksConfig,
        event: Event,
        fired: Option<(&str, &str)>,
        who: &Who<'_>,
        now: Timestamp,
    ) -> Vec<Block> {
        let mut made = Vec::new();
        for rule in cfg.rules.iter().filter(|r| r.on == event) {
            if let Some((scope, horizon)) = fired {
                if rule.scope.as_deref().is_some_and(|s| s != scope)
                    || rule.horizon.as_deref().is_some_and(|h| h != horizon)
                {
                    continue;
                }
            }
            let key = match rule.block {
                BlockScope::Account => who.account.map(str::to_string),
                BlockScope::Org => who.org.map(str::to_string),
                BlockScope::Ip => Some(who.ip_prefix.to_string()),
            };
            let Some(key) = key else { continue };
            // Held to the end of this rule (the block added): concurrent rejections of one subject
            // on several runtime threads then make one block, not one per request with escalated
            // offences.
            let mut q = self.events.entry((rule.name.clone(), key.clone())).or_default();
            if self.check(who, now).is_some_and(|b| b.scope == rule.block) {
                continue; // already blocked; don't extend on every rejected retry
            }
            let hit = {
                let horizon = now - jiff::SignedDuration::try_from(rule.within).unwrap_or_default();
                while q.front().is_some_and(|t| *t < horizon) {
                    q.pop_front();
                }
                q.push_back(now);
                if q.len() >= rule.threshold as usize {
                    q.clear();
                    true
                } else {
                    false
                }
            };
            if !hit {
                continue;
            }
            let offences = {
                let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
                let o = st
                    .offences
                    .entry(format!("{}:{key}", rule.block.as_str()))
                    .or_insert(Offence { count: 0, last: None });
                (o.count, o.last) = (o.count + 1, Some(now));
                o.count
            };
            let factor = u64::from(cfg.escalation_factor).saturating_pow(offences.saturating_sub(1));
            let d = rule.duration.saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX)).min(cfg.max_duration);
            let until = now.checked_add(jiff::SignedDuration::try_from(d).unwrap_or_default()).ok();
            let b = Block {
                scope: rule.block,
                key,
                reason: format!("{} (offence {offences})", rule.name),
                source: format!("rule:{}", rule.name),
                created: now,
                until,
            };
            // On the request path: in effect now, on disk with the next `maintain`.
            self.swap(b.scope, &b.key, Some(b.clone()));
            self.dirty.store(true, Ordering::Release);
            Self::log_block(&b);
            made.push(b);
        }
        made
    }

    /// Put `with` in place of the block on (`scope`, `key`) (none: remove it); returns the block
    /// that was there.
    fn swap(&self, scope: BlockScope, key: &str, with: Option<Block>) -> Option<Block> {
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let old = st.index.remove(scope, key);
        if let Some(b) = with {
            st.index.insert(b);
        }
        old
    }

    /// Write the whole list as a new snapshot and empty the journal. The disk lock is held for
    /// the whole write, so writers never share the temporary file, and the snapshot is taken
    /// under it, so it holds every change the journal held.
    fn persist(&self, now: Timestamp) -> anyhow::Result<()> {
        let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        if disk.path().is_none() {
            return Ok(());
        }
        disk.snapshot(self.saved(now))
    }

    /// The list as the file holds it, expired blocks dropped unless `now` is the epoch.
    fn saved(&self, now: Timestamp) -> BlockFile {
        // Copy under the read lock, sort and serialise after it: a writer waiting on a long read
        // would hold up every request's check behind it.
        let mut file = {
            let st = self.read();
            let blocks = st.index.iter().filter(|b| b.active(now) || now == Timestamp::UNIX_EPOCH).cloned().collect();
            BlockFile { blocks, offences: st.offences.clone(), journal_seq: 0 }
        };
        file.blocks.sort_by(|a, b| (a.scope, &a.key).cmp(&(b.scope, &b.key)));
        file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn who<'a>(account: &'a str, org: &'a str, ip: &str) -> Who<'a> {
        let ip: IpAddr = ip.parse().unwrap();
        Who { account: Some(account), org: Some(org), ip, ip_prefix: crate::policy::identity::ip_prefix(ip, 24, 56) }
    }

    #[test]
    fn rule_blocks_reach_the_file_with_maintain_and_expired_ones_go_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blocks.json");
        let now = t("2026-11-24T10:00:00Z");
        let cfg = BlocksConfig::from_raw(&RawBlocks::default(), dir.path()).unwrap();
        let b = Blocks::open(Some(file.clone())).unwrap();
        let w = who("acct-1", "12345678", "192.0.2.1");
        let made = b.observe(&cfg, Event::Quota, Some(("account", "day")), &w, now);
        assert_eq!(made.len(), 1);
        assert!(b.check(&w, now).is_some(), "in effect at once");
        assert!(!file.exists(), "not written on the request path");
        b.maintain(now, cfg.longest_window(), cfg.max_duration).unwrap();
        assert!(std::fs::read_to_string(&file).unwrap().contains("acct-1"));

        // In memory only: an expired block is pruned anyway (it used to stay, costing every check).
        let m = Blocks::open(None).unwrap();
        let mk = Block {
            scope: BlockScope::Ip,
            key: "203.0.113.0/24".into(),
            reason: "r".into(),
            source: "manual".into(),
            created: now,
            until: Some(t("2026-11-24T11:00:00Z")),
        };
        m.add(mk).unwrap();
        m.maintain(t("2026-11-24T12:00:00Z"), Duration::from_secs(3600), cfg.max_duration).unwrap();
        assert!(m.read().index.iter().next().is_none(), "pruned");

        // The offence history is forgotten `max_duration` after the last offence (bounded).
        assert_eq!(b.read().offences.len(), 1);
        b.maintain(t("2026-12-20T10:00:00Z"), cfg.longest_window(), cfg.max_duration).unwrap();
        assert_eq!(b.read().offences.len(), 1, "within 30 days: remembered");
        b.maintain(t("2026-12-25T10:00:01Z"), cfg.longest_window(), cfg.max_duration).unwrap();
        assert_eq!(b.read().offences.len(), 0, "30 days after the last offence: forgotten");
        // Files of earlier versions hold bare counts: still read.
        let old: BlockFile = serde_json::from_str(r#"{"blocks": [], "offences": {"account:a": 3}}"#).unwrap();
        assert_eq!(old.offences["account:a"], Offence { count: 3, last: None });
    }

    #[test]
    fn blocks_persist_expire_and_unblock() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/blocks.json");
        let now = t("2026-11-24T10:00:00Z");
        let b = Blocks::open(Some(file.clone())).unwrap();
        let mk = |scope, key: &str, until: Option<Timestamp>| Block {
            scope,
            key: key.into(),
            reason: "test".into(),
            source: "manual".into(),
            created: now,
            until,
        };
        b.add(mk(BlockScope::Account, "acct-1", None)).unwrap();
        b.add(mk(BlockScope::Ip, "203.0.113.9/24", Some(t("2026-11-24T11:00:00Z")))).unwrap();
        assert!(b.add(mk(BlockScope::Ip, "nonsense", None)).is_err());
        assert_eq!(b.check(&who("acct-1", "1", "198.51.100.1"), now).unwrap().scope, BlockScope::Account);
        assert_eq!(b.check(&who("acct-2", "1", "203.0.113.200"), now).unwrap().scope, BlockScope::Ip);
        assert!(b.check(&who("acct-2", "1", "203.0.113.200"), t("2026-11-24T11:00:00Z")).is_none(), "expired");

        // A fresh process reads the same list back.
        let again = Blocks::open(Some(file.clone())).unwrap();
        assert_eq!(again.list(now).len(), 2);
        assert!(again.remove(BlockScope::Account, "acct-1").unwrap());
        assert!(!again.remove(BlockScope::Account, "acct-1").unwrap());
        assert_eq!(Blocks::open(Some(file)).unwrap().list(now).len(), 1);
    }

    #[test]
    fn rules_fire_at_threshold_and_escalate() {
        let cfg = BlocksConfig::from_raw(&RawBlocks { file: None, ..RawBlocks::default() }, Path::new(".")).unwrap();
        let b = Blocks::open(None).unwrap();
        let w = who("acct-1", "12345678", "203.0.113.5");
        let mut now = t("2026-11-24T10:00:00Z");
        // Four deep-paging attempts: nothing; the fifth within the hour blocks for 24 h.
        for _ in 0..4 {
            assert!(b.observe(&cfg, Event::DeepPaging, None, &w, now).is_empty());
        }
        let made = b.observe(&cfg, Event::DeepPaging, None, &w, now);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].until, Some(t("2026-11-25T10:00:00Z")));
        // Second offence, after the first expired: twice as long.
        now = t("2026-11-25T10:00:01Z");
        let made = b.observe(&cfg, Event::Quota, Some(("account", "day")), &w, now);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].until, Some(t("2026-11-27T10:00:01Z")));
        // A quota rejection on another horizon does not trigger the day rule.
        let w2 = who("acct-2", "12345678", "203.0.113.5");
        assert!(b.observe(&cfg, Event::Quota, Some(("account", "hour")), &w2, now).is_empty());
        // The org and ip day rules block the whole organisation and the client's /24.
        let made = b.observe(&cfg, Event::Quota, Some(("org", "day")), &w2, now);
        assert_eq!((made.len(), made[0].scope, made[0].key.as_str()), (1, BlockScope::Org, "12345678"));
        let w3 = who("acct-3", "99999999", "198.51.100.7");
        let made = b.observe(&cfg, Event::Quota, Some(("ip", "day")), &w3, now);
        assert_eq!((made.len(), made[0].scope, made[0].key.as_str()), (1, BlockScope::Ip, "198.51.100.0/24"));
        assert!(b.check(&who("acct-4", "11111111", "198.51.100.200"), now).is_some(), "the /24 is blocked");
    }

    #[test]
    fn every_rule_error_is_reported() {
        let mut raw = RawBlocks::default();
        raw.rules[0].on = "sometimes".into();
        raw.rules[1].block = "planet".into();
        raw.rules[1].duration = "forever".into();
        let e = BlocksConfig::from_raw(&raw, Path::new(".")).unwrap_err();
        let keys: Vec<_> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(keys, ["rules[0].on", "rules[1].block", "rules[1].duration"]);
    }
}
