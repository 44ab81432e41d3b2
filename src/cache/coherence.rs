//! Whether this instance hears about changes in time. Two channels tell it: the Postgres change
//! listener (every committed change) and the peer bus (other instances' writes, sooner). While an
//! enabled channel is down, a change may go unheard, so new L1 entries live at most a short TTL.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

pub use crate::labels::ChannelState;

fn from_u8(v: u8) -> ChannelState {
    match v {
        0 => ChannelState::Disabled,
        1 => ChannelState::Down,
        _ => ChannelState::Up,
    }
}

fn as_u8(s: ChannelState) -> u8 {
    match s {
        ChannelState::Disabled => 0,
        ChannelState::Down => 1,
        ChannelState::Up => 2,
    }
}

/// Listener and bus state, shared by the tasks that run them and the cache that obeys them.
#[derive(Debug)]
pub struct Coherence {
    listener: AtomicU8,
    bus: AtomicU8,
    degraded_l1_ttl: Duration,
}

impl Coherence {
    /// Enabled channels start down: until they are up, L1 entries are short-lived.
    pub fn new(listener: bool, bus: bool, degraded_l1_ttl: Duration) -> Self {
        let start = |on: bool| {
            if on {
                as_u8(ChannelState::Down)
            } else {
                as_u8(ChannelState::Disabled)
            }
        };
        Coherence {
            listener: AtomicU8::new(start(listener)),
            bus: AtomicU8::new(start(bus)),
            degraded_l1_ttl,
        }
    }

    /// Neither channel: a single instance whose only writer is itself (unit tests, tools).
    pub fn none() -> Self {
        Self::new(false, false, Duration::ZERO)
    }

    pub fn listener(&self) -> ChannelState {
        from_u8(self.listener.load(Ordering::Relaxed))
    }
    pub fn bus(&self) -> ChannelState {
        from_u8(self.bus.load(Ordering::Relaxed))
    }

    /// Records the listener's state; a disabled channel stays disabled.
    pub fn set_listener(&self, up: bool) {
        Self::set(&self.listener, up);
    }
    pub fn set_bus(&self, up: bool) {
        Self::set(&self.bus, up);
    }

    fn set(slot: &AtomicU8, up: bool) {
        let to = as_u8(if up {
            ChannelState::Up
        } else {
            ChannelState::Down
        });
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            (v != as_u8(ChannelState::Disabled)).then_some(to)
        });
    }

    /// The most an L1 entry may live right now: `Some` while an enabled channel is down.
    pub fn l1_ttl_cap(&self) -> Option<Duration> {
        let down = self.listener() == ChannelState::Down || self.bus() == ChannelState::Down;
        down.then_some(self.degraded_l1_ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_down_channel_caps_l1() {
        let c = Coherence::new(true, true, Duration::from_secs(5));
        assert_eq!(c.l1_ttl_cap(), Some(Duration::from_secs(5)));
        c.set_listener(true);
        assert_eq!(
            c.l1_ttl_cap(),
            Some(Duration::from_secs(5)),
            "bus still down"
        );
        c.set_bus(true);
        assert_eq!(c.l1_ttl_cap(), None);
        c.set_bus(false);
        assert_eq!(c.bus(), ChannelState::Down);
        assert!(c.l1_ttl_cap().is_some());
    }

    #[test]
    fn disabled_channels_stay_disabled() {
        let c = Coherence::new(true, false, Duration::from_secs(5));
        c.set_bus(true);
        assert_eq!(c.bus(), ChannelState::Disabled);
        c.set_listener(true);
        assert_eq!(c.l1_ttl_cap(), None);
    }
}
