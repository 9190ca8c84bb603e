//! nfnetlink / nf_tables wire format: batch framing, table/chain/rule messages, expression
//! encoding and the parsing of GETGEN and GETRULE replies.
//!
//! Every nf_tables integer attribute is big-endian (the kernel reads them with ntohl); data
//! loaded into registers is raw bytes (addresses and ports in network order, the values that
//! `meta`, `ct` and `fib` store are host-order u32).

use super::msg::{attrs, MsgBuilder, RecvMsg, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST};

pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16; // NLMSG_MIN_TYPE
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_BATCH_GENID: u16 = 1;
const NFNETLINK_V0: u8 = 0;

pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_BRIDGE: u8 = 7;
pub const NFPROTO_IPV6: u8 = 10;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_GETGEN: u16 = 16;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_GEN_ID: u16 = 1;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// libnftnl's rule user-data TLV type for a comment (NFTNL_UDATA_RULE_COMMENT).
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
/// NFT_USERDATA_MAXLEN.
const USERDATA_MAX: usize = 256;

// Registers: the 16-byte ones, as nft uses them (an IPv6 address fits in one).
pub const NFT_REG_VERDICT: u32 = 0;
pub const NFT_REG_1: u32 = 1;
pub const NFT_REG_2: u32 = 2;

// Verdicts.
pub const NF_DROP: i32 = 0;
pub const NFT_JUMP: i32 = -3;

pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_CMP_NEQ: u32 = 1;

pub const NFT_PAYLOAD_LL_HEADER: u32 = 0;
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

pub const NFT_META_IIFNAME: u32 = 6;
pub const NFT_META_L4PROTO: u32 = 16;

pub const NFT_CT_STATUS: u32 = 2;
/// IPS_DST_NAT in enum ip_conntrack_status.
pub const IPS_DST_NAT: u32 = 0x20;

pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// RTN_LOCAL, the address type `fib ... type local` compares with.
pub const RTN_LOCAL: u32 = 2;

pub const NFT_NAT_DNAT: u32 = 1;
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;

const NFT_BITWISE_MASK_XOR: u32 = 0;

/// One nf_tables expression, as podnet's rules use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        op: u32,
        sreg: u32,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor` over `mask.len()` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Fib {
        result: u32,
        flags: u32,
        dreg: u32,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    /// Loads data into a data register.
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    /// Loads a verdict (accept/drop/jump) into the verdict register.
    Verdict {
        code: i32,
        chain: Option<String>,
    },
    Nat {
        ty: u32,
        family: u32,
        reg_addr_min: Option<u32>,
        reg_proto_min: Option<u32>,
        flags: u32,
    },
    Masq,
    Counter,
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Fib { .. } => "fib",
            Expr::Ct { .. } => "ct",
            Expr::Immediate { .. } | Expr::Verdict { .. } => "immediate",
            Expr::Nat { .. } => "nat",
            Expr::Masq => "masq",
            Expr::Counter => "counter",
        }
    }

    /// Appends this expression's NFTA_EXPR_DATA attributes.
    fn encode(&self, m: &mut MsgBuilder) {
        match self {
            Expr::Meta { key, dreg } => {
                m.attr_be32(1, *dreg); // NFTA_META_DREG
                m.attr_be32(2, *key); // NFTA_META_KEY
            }
            Expr::Payload { base, offset, len, dreg } => {
                m.attr_be32(1, *dreg); // NFTA_PAYLOAD_DREG
                m.attr_be32(2, *base); // NFTA_PAYLOAD_BASE
                m.attr_be32(3, *offset); // NFTA_PAYLOAD_OFFSET
                m.attr_be32(4, *len); // NFTA_PAYLOAD_LEN
            }
            Expr::Cmp { op, sreg, data } => {
                m.attr_be32(1, *sreg); // NFTA_CMP_SREG
                m.attr_be32(2, *op); // NFTA_CMP_OP
                data_value(m, 3, data); // NFTA_CMP_DATA
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                m.attr_be32(1, *sreg); // NFTA_BITWISE_SREG
                m.attr_be32(2, *dreg); // NFTA_BITWISE_DREG
                m.attr_be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                data_value(m, 4, mask); // NFTA_BITWISE_MASK
                data_value(m, 5, xor); // NFTA_BITWISE_XOR
                m.attr_be32(6, NFT_BITWISE_MASK_XOR); // NFTA_BITWISE_OP
            }
            Expr::Fib { result, flags, dreg } => {
                m.attr_be32(1, *dreg); // NFTA_FIB_DREG
                m.attr_be32(2, *result); // NFTA_FIB_RESULT
                m.attr_be32(3, *flags); // NFTA_FIB_FLAGS
            }
            Expr::Ct { key, dreg } => {
                m.attr_be32(1, *dreg); // NFTA_CT_DREG
                m.attr_be32(2, *key); // NFTA_CT_KEY
            }
            Expr::Immediate { dreg, data } => {
                m.attr_be32(1, *dreg); // NFTA_IMMEDIATE_DREG
                data_value(m, 2, data); // NFTA_IMMEDIATE_DATA
            }
            Expr::Verdict { code, chain } => {
                m.attr_be32(1, NFT_REG_VERDICT);
                let d = m.nest_start(2); // NFTA_IMMEDIATE_DATA
                let v = m.nest_start(NFTA_DATA_VERDICT);
                m.attr_be32(NFTA_VERDICT_CODE, *code as u32);
                if let Some(chain) = chain {
                    m.attr_str(NFTA_VERDICT_CHAIN, chain);
                }
                m.nest_end(v);
                m.nest_end(d);
            }
            Expr::Nat { ty, family, reg_addr_min, reg_proto_min, flags } => {
                m.attr_be32(1, *ty); // NFTA_NAT_TYPE
                m.attr_be32(2, *family); // NFTA_NAT_FAMILY
                if let Some(r) = reg_addr_min {
                    m.attr_be32(3, *r); // NFTA_NAT_REG_ADDR_MIN
                }
                if let Some(r) = reg_proto_min {
                    m.attr_be32(5, *r); // NFTA_NAT_REG_PROTO_MIN
                }
                if *flags != 0 {
                    m.attr_be32(7, *flags); // NFTA_NAT_FLAGS
                }
            }
            Expr::Masq | Expr::Counter => {}
        }
    }
}

/// A nested nft_data holding a plain value.
fn data_value(m: &mut MsgBuilder, ty: u16, value: &[u8]) {
    let n = m.nest_start(ty);
    m.attr(NFTA_DATA_VALUE, value);
    m.nest_end(n);
}

/// The fixed nfgenmsg header: family, version, resource id (big-endian).
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, NFNETLINK_V0, r[0], r[1]]
}

fn nft_msg(msg: u16, flags: u16, family: u8) -> MsgBuilder {
    MsgBuilder::new((NFNL_SUBSYS_NFTABLES << 8) | msg, NLM_F_REQUEST | flags).header(&nfgenmsg(family, 0))
}

/// NFNL_MSG_BATCH_BEGIN for nf_tables; with `genid`, the kernel refuses the whole batch with
/// ERESTART if the ruleset changed since that generation (optimistic concurrency, as nft does).
pub fn batch_begin(genid: Option<u32>) -> MsgBuilder {
    let mut m = MsgBuilder::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST).header(&nfgenmsg(0, NFNL_SUBSYS_NFTABLES));
    if let Some(g) = genid {
        m.attr_be32(NFNL_BATCH_GENID, g);
    }
    m
}

pub fn batch_end() -> MsgBuilder {
    MsgBuilder::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST).header(&nfgenmsg(0, NFNL_SUBSYS_NFTABLES))
}

/// NEWTABLE with NLM_F_CREATE and no NLM_F_EXCL: creates the table or leaves it as it is.
pub fn new_table(family: u8, name: &str) -> MsgBuilder {
    let mut m = nft_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, family);
    m.attr_str(NFTA_TABLE_NAME, name);
    m
}

/// A base chain's hook: chain type ("nat", "filter"), hook number and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    pub ty: &'static str,
    pub num: u32,
    pub priority: i32,
}

/// NEWCHAIN with NLM_F_CREATE and no NLM_F_EXCL: idempotent as long as an existing chain
/// has the same type, hook and priority (the kernel answers EEXIST otherwise).
pub fn new_chain(family: u8, table: &str, name: &str, hook: Option<Hook>) -> MsgBuilder {
    let mut m = nft_msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family);
    m.attr_str(NFTA_CHAIN_TABLE, table);
    m.attr_str(NFTA_CHAIN_NAME, name);
    if let Some(h) = hook {
        let n = m.nest_start(NFTA_CHAIN_HOOK);
        m.attr_be32(NFTA_HOOK_HOOKNUM, h.num);
        m.attr_be32(NFTA_HOOK_PRIORITY, h.priority as u32);
        m.nest_end(n);
        m.attr_str(NFTA_CHAIN_TYPE, h.ty);
    }
    m
}

/// The libnftnl user-data TLV holding a rule comment, which `nft list` shows as `comment "…"`.
pub fn comment_udata(comment: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(comment.len() + 3);
    v.push(NFTNL_UDATA_RULE_COMMENT);
    v.push((comment.len() + 1) as u8);
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    v
}

/// NEWRULE appended at the end of `chain`.
pub fn new_rule(family: u8, table: &str, chain: &str, exprs: &[Expr], comment: Option<&str>) -> MsgBuilder {
    let mut m = nft_msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family);
    m.attr_str(NFTA_RULE_TABLE, table);
    m.attr_str(NFTA_RULE_CHAIN, chain);
    let list = m.nest_start(NFTA_RULE_EXPRESSIONS);
    for e in exprs {
        let elem = m.nest_start(NFTA_LIST_ELEM);
        m.attr_str(NFTA_EXPR_NAME, e.name());
        let data = m.nest_start(NFTA_EXPR_DATA);
        e.encode(&mut m);
        m.nest_end(data);
        m.nest_end(elem);
    }
    m.nest_end(list);
    if let Some(c) = comment {
        let ud = comment_udata(c);
        debug_assert!(ud.len() <= USERDATA_MAX);
        m.attr(NFTA_RULE_USERDATA, &ud);
    }
    m
}

/// DELRULE of one rule. The chain must be given: without it the kernel flushes the table.
pub fn del_rule(family: u8, table: &str, chain: &str, handle: u64) -> MsgBuilder {
    let mut m = nft_msg(NFT_MSG_DELRULE, 0, family);
    m.attr_str(NFTA_RULE_TABLE, table);
    m.attr_str(NFTA_RULE_CHAIN, chain);
    m.attr_be64(NFTA_RULE_HANDLE, handle);
    m
}

/// GETGEN: the current ruleset generation.
pub fn get_gen() -> MsgBuilder {
    nft_msg(NFT_MSG_GETGEN, 0, 0)
}

/// The generation id from a GETGEN reply.
pub fn parse_gen(msgs: &[RecvMsg]) -> Option<u32> {
    msgs.iter().filter_map(|m| m.body.get(4..)).flat_map(attrs).find(|a| a.ty == NFTA_GEN_ID).and_then(|a| a.be32())
}

/// A GETRULE dump of table `table` in `family`, or of one chain of it. (With a table filter
/// the kernel stops after the first table of that name, so the family must be given.)
pub fn dump_rules(family: u8, table: &str, chain: Option<&str>) -> MsgBuilder {
    let mut m = nft_msg(NFT_MSG_GETRULE, NLM_F_DUMP, family);
    m.attr_str(NFTA_RULE_TABLE, table);
    if let Some(c) = chain {
        m.attr_str(NFTA_RULE_CHAIN, c);
    }
    m
}

/// What podnet needs to know about an installed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
}

/// Parses one GETRULE reply (NEWRULE message); None for anything else or a malformed one.
pub fn parse_rule(msg: &RecvMsg) -> Option<RuleInfo> {
    if msg.msg_type != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE {
        return None;
    }
    let family = *msg.body.first()?;
    let (mut table, mut chain, mut handle, mut comment) = (None, None, None, None);
    for a in attrs(msg.body.get(4..)?) {
        match a.ty {
            NFTA_RULE_TABLE => table = a.str().map(str::to_owned),
            NFTA_RULE_CHAIN => chain = a.str().map(str::to_owned),
            NFTA_RULE_HANDLE => handle = a.be64(),
            NFTA_RULE_USERDATA => comment = parse_comment(a.payload),
            _ => {}
        }
    }
    Some(RuleInfo { family, table: table?, chain: chain?, handle: handle?, comment })
}

/// The comment in a libnftnl user-data blob (a sequence of u8 type, u8 length, value).
pub fn parse_comment(mut ud: &[u8]) -> Option<String> {
    while ud.len() >= 2 {
        let (ty, len) = (ud[0], ud[1] as usize);
        let value = ud.get(2..2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return std::str::from_utf8(&value[..end]).ok().map(str::to_owned);
        }
        ud = &ud[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_udata_round_trips() {
        let ud = comment_udata("podnet:abc/eth0");
        assert_eq!(ud[0], 0);
        assert_eq!(ud[1] as usize, "podnet:abc/eth0".len() + 1);
        assert_eq!(*ud.last().unwrap_or(&1), 0);
        assert_eq!(parse_comment(&ud).as_deref(), Some("podnet:abc/eth0"));
        // Another TLV first (e.g. nft's expression hints) is skipped.
        let mut other = vec![7u8, 2, 1, 2];
        other.extend_from_slice(&ud);
        assert_eq!(parse_comment(&other).as_deref(), Some("podnet:abc/eth0"));
        assert_eq!(parse_comment(&[0, 9, b'x']), None);
    }

    #[test]
    fn rule_message_parses_back() {
        let m = new_rule(NFPROTO_IPV4, "podnet", "postrouting", &[Expr::Counter, Expr::Masq], Some("t1"));
        let bytes = m.finish(1);
        let body = bytes[16..].to_vec();
        let mut msg = RecvMsg { msg_type: (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE, flags: 0, seq: 1, body };
        // A dump reply also carries the handle.
        let mut h = MsgBuilder::new(0, 0);
        h.attr_be64(NFTA_RULE_HANDLE, 42);
        msg.body.extend_from_slice(&h.finish(0)[16..]);
        let r = parse_rule(&msg).expect("parse");
        assert_eq!(
            r,
            RuleInfo {
                family: NFPROTO_IPV4,
                table: "podnet".into(),
                chain: "postrouting".into(),
                handle: 42,
                comment: Some("t1".into()),
            }
        );
    }
}
