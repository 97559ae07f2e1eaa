//! The kernel's one-byte codes as userspace types: a record is converted
//! once, where it is read ([`FlowEvent::hook`], [`FlowEvent::verdict`],
//! [`FlowEvent::reason`]), and matched by name from there on.

use crate::{FlowEvent, hook, reason, verdict};

macro_rules! kernel_codes {
    ($(#[$doc:meta])* $name:ident, $unknown:ident, $mod:ident { $($variant:ident = $code:ident, $text:literal;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)*
        }

        impl $name {
            /// The kernel's code; one the kernel never sends reads as
            #[doc = concat!("[`", stringify!($name), "::", stringify!($unknown), "`].")]
            pub fn from_code(code: u8) -> Self {
                match code {
                    $($mod::$code => Self::$variant,)*
                    _ => Self::$unknown,
                }
            }

            /// The code the kernel programs write.
            pub fn code(self) -> u8 {
                match self {
                    $(Self::$variant => $mod::$code,)*
                }
            }

            /// The name events carry.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }
    };
}

kernel_codes!(
    /// Which hook judged.
    Hook, Unknown, hook {
        Xdp = XDP, "xdp";
        Connect4 = CONNECT4, "connect4";
        Connect6 = CONNECT6, "connect6";
        Sendmsg4 = SENDMSG4, "sendmsg4";
        Sendmsg6 = SENDMSG6, "sendmsg6";
        Bind4 = BIND4, "bind4";
        Bind6 = BIND6, "bind6";
        NftInput = NFT_INPUT, "nft-input";
        NftOutput = NFT_OUTPUT, "nft-output";
        SkbEgress = SKB_EGRESS, "skb-egress";
        SkbIngress = SKB_INGRESS, "skb-ingress";
        Dns = DNS, "dns";
        ConnectSource = CONNECT_SOURCE, "connect-source";
        Unknown = UNKNOWN, "unknown";
    }
);

kernel_codes!(
    /// What was decided. A code the kernel never sends reads as a deny.
    Verdict, Deny, verdict {
        Allow = ALLOW, "allow";
        Deny = DENY, "deny";
        WouldDeny = WOULD_DENY, "would_deny";
    }
);

kernel_codes!(
    /// Why.
    Reason, Unknown, reason {
        IngressAllowed = INGRESS_ALLOWED, "ingress_allowed";
        IngressNotAllowed = INGRESS_NOT_ALLOWED, "ingress_not_allowed";
        Malformed = MALFORMED, "malformed";
        LocalAllowed = LOCAL_ALLOWED, "local_allowed";
        LocalNotAllowed = LOCAL_NOT_ALLOWED, "local_not_allowed";
        BindAllowed = BIND_ALLOWED, "bind_allowed";
        BindNotAllowed = BIND_NOT_ALLOWED, "bind_not_allowed";
        EgressAllowed = EGRESS_ALLOWED, "egress_allowed";
        EgressNotAllowed = EGRESS_NOT_ALLOWED, "egress_not_allowed";
        SourceRouted = SOURCE_ROUTED, "source_routed";
        NotServerSocket = NOT_SERVER_SOCKET, "not_server_socket";
        InboundNotAllowed = INBOUND_NOT_ALLOWED, "inbound_not_allowed";
        Banned = BANNED, "banned";
        NameNotAllowed = NAME_NOT_ALLOWED, "name_not_allowed";
        HostAllowed = HOST_ALLOWED, "host_allowed";
        RemoteAllowed = REMOTE_ALLOWED, "remote_allowed";
        Unknown = UNKNOWN, "unknown";
    }
);

impl Hook {
    pub fn is_bind(self) -> bool {
        matches!(self, Self::Bind4 | Self::Bind6)
    }

    pub fn is_connect(self) -> bool {
        matches!(self, Self::Connect4 | Self::Connect6)
    }

    /// Hooks that judge packets (both ends' addresses and ports), not system calls.
    pub fn is_packet(self) -> bool {
        matches!(
            self,
            Self::Xdp | Self::NftInput | Self::NftOutput | Self::SkbEgress | Self::SkbIngress
        )
    }

    /// Packet hooks that know the local socket's owner (uid), not its process.
    pub fn has_socket_owner(self) -> bool {
        matches!(self, Self::NftOutput | Self::SkbEgress | Self::SkbIngress)
    }

    /// Whether the judged flow comes in (its destination is this host).
    pub fn is_inbound(self) -> bool {
        matches!(
            self,
            Self::Xdp | Self::NftInput | Self::SkbIngress | Self::Bind4 | Self::Bind6
        )
    }
}

impl Verdict {
    /// Let through: allowed, or denied by a section that only audits.
    pub fn let_through(self) -> bool {
        matches!(self, Self::Allow | Self::WouldDeny)
    }
}

impl FlowEvent {
    pub fn hook(&self) -> Hook {
        Hook::from_code(self.hook)
    }

    pub fn verdict(&self) -> Verdict {
        Verdict::from_code(self.verdict)
    }

    pub fn reason(&self) -> Reason {
        Reason::from_code(self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_named() {
        for code in 0..=u8::MAX {
            let h = Hook::from_code(code);
            if h != Hook::Unknown {
                assert_eq!(h.code(), code);
            }
            let r = Reason::from_code(code);
            if r != Reason::Unknown {
                assert_eq!(r.code(), code);
            }
        }
        assert_eq!(Hook::from_code(200).as_str(), "unknown");
        assert_eq!(Verdict::from_code(200), Verdict::Deny);
        assert_eq!(
            Verdict::from_code(verdict::WOULD_DENY).as_str(),
            "would_deny"
        );
        assert_eq!(Reason::from_code(reason::BANNED).as_str(), "banned");
    }
}
