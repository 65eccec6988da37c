//! W3C Trace Context: the `traceparent` a request arrives with (or one started at the
//! ingress) travels with its notification through NATS (a message header), and every
//! delivery attempt sends a child of it to the receiver, so one trace id joins the
//! client's request, Herald's log lines and the webhook the receiver gets.
//!
//! Herald records no spans of its own here, so a trace it starts is marked not sampled;
//! a caller's sampled flag is passed on as it came.

/// The header, in NATS messages and HTTP requests alike.
pub const HEADER: &str = "traceparent";

/// One `traceparent`: a trace, the span that is the parent of the next hop, and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` when it is not valid (the caller then starts a
    /// trace of its own, as the specification asks). Versions above 00 are read by their
    /// version-00 prefix; version ff is invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let prefix = value.get(..55)?;
        let rest = &value[55..];
        let mut parts = prefix.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2)) {
            return None;
        }
        match version {
            "ff" => return None,
            "00" if !rest.is_empty() => return None,
            _ if !rest.is_empty() && !rest.starts_with('-') => return None,
            _ => {}
        }
        let parent = TraceParent {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parent.trace_id != 0 && parent.span_id != 0).then_some(parent)
    }

    /// A new trace, not sampled.
    pub fn root() -> Self {
        TraceParent {
            trace_id: non_zero(fastrand::u128(..)),
            span_id: non_zero(fastrand::u64(..)),
            flags: 0,
        }
    }

    /// The next hop's parent: the same trace and flags, a new span.
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: non_zero(fastrand::u64(..)),
            ..*self
        }
    }

    /// The child of `value` if it is a valid `traceparent`, else a new trace.
    pub fn continue_from(value: Option<&str>) -> Self {
        value
            .and_then(Self::parse)
            .map_or_else(Self::root, |parent| parent.child())
    }

    /// The header value (version 00).
    pub fn to_header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The trace id as log lines and the W3C format write it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// An id of all zeros is invalid; the chance is nil, the rule is cheap.
fn non_zero<T: PartialEq + From<u8>>(id: T) -> T {
    if id == T::from(0) {
        T::from(1)
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_round_trips() {
        let t = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.span_id, 0x00f067aa0ba902b7);
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_header(), EXAMPLE);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version is read by its version-00 prefix.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(TraceParent::parse(later).is_some());
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_and_takes_a_new_span() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let child = TraceParent::continue_from(Some(EXAMPLE));
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.span_id, parent.span_id);
        let started = TraceParent::continue_from(Some("garbage"));
        assert_ne!(started.trace_id, parent.trace_id);
        assert_eq!(started.flags, 0, "a trace Herald starts is not sampled");
        assert_eq!(TraceParent::parse(&started.to_header()), Some(started));
    }
}
