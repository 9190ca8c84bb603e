//! podnet's firewall: hostPort DNAT, hairpin and ipMasq masquerade, and MAC anti-spoofing,
//! installed over nf_tables netlink (NETLINK_NETFILTER) in one atomic batch per attachment.
//! Nothing is exec'd: no `nft`, no `iptables`, no libnftnl.
//!
//! podnet owns tables named `podnet` in the ip, ip6 and bridge families. Every rule it adds
//! for an attachment carries the attachment's tag as its comment (libnftnl's user-data
//! format, so `nft list ruleset` shows `comment "<tag>"`); removal, CHECK and GC find rules
//! by that comment. The only untagged rules are the static `fib daddr type local jump
//! hostports` at the head of the nat `prerouting` and `output` chains.

mod msg;
mod plan;
mod rules;
mod socket;
mod wire;

#[cfg(test)]
mod tests;

use crate::error::{codes, CniError, Result};
use crate::netlink::NlError;
use msg::MsgBuilder;
use socket::NlSocket;

pub use plan::{FirewallPlan, PortMap};
use rules::{family_name, Rule, FAMILIES, OUTPUT, PREROUTING};
pub use rules::{BRIDGE_PREROUTING_PRIORITY, TABLE, TAG_MAX};
use wire::{RuleInfo, NFPROTO_BRIDGE};

/// A NETLINK_NETFILTER socket bound to one network namespace.
pub struct Firewall {
    sock: NlSocket,
}

/// How often a batch is retried when the ruleset changed under it (ERESTART on the
/// generation check, or ENOENT for a rule someone else just deleted).
const ATTEMPTS: u32 = 32;

fn nl_err(what: impl std::fmt::Display, e: NlError) -> CniError {
    CniError::io(what, e)
}

impl Firewall {
    /// Opens the socket in the calling thread's network namespace; it keeps working on that
    /// namespace from any thread.
    pub fn new() -> Result<Firewall> {
        NlSocket::new(libc::NETLINK_NETFILTER)
            .map(|sock| Firewall { sock })
            .map_err(|e| CniError::io("opening a NETLINK_NETFILTER socket for nf_tables", e))
    }

    /// How many rules `add` installs for `plan`. The tag is not looked at (an empty one is
    /// fine here); a plan whose rules `add` would refuse counts 0.
    pub fn plan_rule_count(plan: &FirewallPlan) -> usize {
        rules::rules_of(plan).map(|r| r.len()).unwrap_or(0)
    }

    /// Installs every rule of `plan` in one atomic batch, creating podnet's tables and chains
    /// in the families the plan needs. Table and chain creation is idempotent; the static jump
    /// rules are added only where they are missing, guarded by the ruleset generation so that
    /// concurrent adds never duplicate them.
    pub fn add(&mut self, plan: &FirewallPlan) -> Result<()> {
        let tagged = rules::plan_rules(plan)?;
        if tagged.is_empty() {
            return Ok(());
        }
        let families: Vec<u8> = FAMILIES.into_iter().filter(|f| tagged.iter().any(|r| r.family == *f)).collect();
        // Set once a batch that skipped existing tables and chains found one missing.
        let mut create_all = false;
        for attempt in 1..=ATTEMPTS {
            let genid = self.genid()?;
            // The static rules missing from the nat base chains (a chain or table that does not
            // exist yet has none).
            let mut statics: Vec<Rule> = Vec::new();
            for &f in families.iter().filter(|&&f| f != NFPROTO_BRIDGE) {
                for chain in [PREROUTING, OUTPUT] {
                    let have = self.dump(f, Some(chain))?;
                    if !have.iter().any(|r| r.comment.is_none()) {
                        statics.push(rules::static_rule(f, chain));
                    }
                }
            }
            let mut msgs: Vec<MsgBuilder> = Vec::new();
            let mut what: Vec<String> = Vec::new();
            for &f in &families {
                // Declaring an existing base chain again is a chain update that the kernel
                // completes only after an RCU grace period, which the process then waits for
                // (at the latest when it closes the socket): ~10 ms per ADD. The table and its
                // chains exist when the static rules do (one batch creates them all), so they
                // are declared only when a static rule is missing; if one was deleted behind
                // our back, ENOENT below retries with everything.
                if f != NFPROTO_BRIDGE && !create_all && !statics.iter().any(|r| r.family == f) {
                    continue;
                }
                let fam = family_name(f);
                msgs.push(wire::new_table(f, TABLE));
                what.push(format!("creating table {fam} {TABLE}"));
                for c in rules::chains(f) {
                    msgs.push(wire::new_chain(f, TABLE, c.name, c.hook));
                    what.push(format!("creating chain {fam} {TABLE} {}", c.name));
                }
            }
            let untagged = statics.iter().map(|r| (r, None));
            for (r, comment) in untagged.chain(tagged.iter().map(|r| (r, Some(plan.tag.as_str())))) {
                msgs.push(wire::new_rule(r.family, TABLE, r.chain, &r.exprs, comment));
                what.push(format!("adding rule `{}` to chain {} {TABLE} {}", r.what, family_name(r.family), r.chain));
            }
            // The generation check only matters when static rules are added: tagged rules
            // are never duplicated by a concurrent change.
            let guard = if statics.is_empty() { None } else { Some(genid) };
            match self.sock.batch(wire::batch_begin(guard), msgs, wire::batch_end()) {
                Ok(_) => return Ok(()),
                // Lost the race for the static rules: re-read and try again at once.
                Err((_, e)) if e.is(libc::ERESTART) && attempt < ATTEMPTS => continue,
                Err((_, e)) if e.is(libc::ENOENT) && !create_all && attempt < ATTEMPTS => {
                    create_all = true;
                }
                Err((i, e)) => {
                    let step = what.get(i).map(String::as_str).unwrap_or("committing the batch");
                    return Err(nl_err(format!("installing firewall rules for {:?}: {step}", plan.tag), e));
                }
            }
        }
        Err(CniError::new(
            codes::TRY_AGAIN,
            format!("installing firewall rules for {:?}: the ruleset kept changing", plan.tag),
        ))
    }

    /// Deletes every rule whose comment is `tag` from podnet's tables, in one batch; returns
    /// how many. Absent tables (or no such rule) are Ok(0).
    pub fn remove(&mut self, tag: &str) -> Result<usize> {
        self.remove_where(tag, |t| t == tag)
    }

    /// Deletes every tagged rule whose tag satisfies `pred`, with one listing per family and
    /// one batch (DEL of an attachment's tags, GC of a network's stale ones). `what` names
    /// the selection in errors.
    pub fn remove_where(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> Result<usize> {
        let tag = what;
        for attempt in 1..=ATTEMPTS {
            let mine: Vec<RuleInfo> =
                self.all()?.into_iter().filter(|r| r.comment.as_deref().is_some_and(&pred)).collect();
            if mine.is_empty() {
                return Ok(0);
            }
            let msgs = mine.iter().map(|r| wire::del_rule(r.family, &r.table, &r.chain, r.handle)).collect();
            match self.sock.batch(wire::batch_begin(None), msgs, wire::batch_end()) {
                Ok(_) => return Ok(mine.len()),
                // Someone else deleted one of them meanwhile: look again.
                Err((_, e)) if e.is(libc::ENOENT) && attempt < ATTEMPTS => continue,
                Err((i, e)) => {
                    let step = match mine.get(i) {
                        Some(r) => format!(
                            "deleting rule handle {} of chain {} {} {}",
                            r.handle,
                            family_name(r.family),
                            r.table,
                            r.chain
                        ),
                        None => "committing the batch".into(),
                    };
                    return Err(nl_err(format!("removing firewall rules of {tag:?}: {step}"), e));
                }
            }
        }
        Err(CniError::new(codes::TRY_AGAIN, format!("removing firewall rules of {tag:?}: the ruleset kept changing")))
    }

    /// The distinct tags (comments) of all rules in podnet's tables, sorted.
    pub fn tags(&mut self) -> Result<Vec<String>> {
        let mut t: Vec<String> = self.all()?.into_iter().filter_map(|r| r.comment).collect();
        t.sort();
        t.dedup();
        Ok(t)
    }

    /// How many rules in podnet's tables carry `tag`.
    pub fn count(&mut self, tag: &str) -> Result<usize> {
        Ok(self.all()?.iter().filter(|r| r.comment.as_deref() == Some(tag)).count())
    }

    fn genid(&mut self) -> Result<u32> {
        let msgs =
            self.sock.request(wire::get_gen()).map_err(|e| nl_err("reading the nf_tables ruleset generation", e))?;
        wire::parse_gen(&msgs).ok_or_else(|| {
            CniError::new(codes::IO_FAILURE, "reading the nf_tables ruleset generation: no NFTA_GEN_ID in the reply")
        })
    }

    /// The rules of podnet's table in every family.
    fn all(&mut self) -> Result<Vec<RuleInfo>> {
        let mut out = Vec::new();
        for f in FAMILIES {
            out.extend(self.dump(f, None)?);
        }
        Ok(out)
    }

    /// The rules of podnet's table in `family` (one chain of it with `chain`). A missing
    /// table or chain is an empty list. One dump per family: with a table filter the kernel
    /// stops at the first table of that name, whatever the family.
    fn dump(&mut self, family: u8, chain: Option<&str>) -> Result<Vec<RuleInfo>> {
        let what = || match chain {
            Some(c) => format!("listing the rules of chain {} {TABLE} {c}", family_name(family)),
            None => format!("listing the rules of table {} {TABLE}", family_name(family)),
        };
        let msgs = match self.sock.request(wire::dump_rules(family, TABLE, chain)) {
            Ok(m) => m,
            Err(e) if e.is(libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(nl_err(what(), e)),
        };
        Ok(msgs
            .iter()
            .filter_map(wire::parse_rule)
            .filter(|r| r.family == family && r.table == TABLE && (chain.is_none() || chain == Some(r.chain.as_str())))
            .collect())
    }
}
