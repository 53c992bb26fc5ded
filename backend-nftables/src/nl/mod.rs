//! nf_tables over netlink, in the kernel's own words: attributes
//! ([`attrs`]), expressions ([`expr`]) and the messages of a transaction
//! ([`msg`]), sent as one `NFNL_MSG_BATCH_BEGIN` … `END` batch. No I/O
//! here; the socket is `proxier_netfilter::NfnlSocket`.

pub mod attrs;
pub mod build;
pub mod expr;
pub mod msg;
