//! The one clock of leases, visibility timeouts, claims and job times: the wall clock (every
//! process on a machine shares it, so a lease written by one is read right by another), moved
//! by as much as tokio's clock is ahead of the real one. That is nothing in a running platform,
//! and in a test on tokio's paused clock (`#[tokio::test(start_paused = true)]`) it makes every
//! time nimbus reads follow `tokio::time::advance` and the auto-advance of an idle runtime: a
//! lease runs out, a message becomes visible again, a claim is swept, without real sleeps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by nimbus's clock (see the module).
pub fn now_ms() -> i64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, micros);
    // Added in microseconds and truncated once, so that a paused clock moved by a whole
    // number of milliseconds moves this by exactly as many.
    wall.saturating_add(tokio_ahead_us()).div_euclid(1000)
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// How far tokio's clock is ahead of the real one (behind: negative), in microseconds: 0
/// unless the runtime's clock is paused.
fn tokio_ahead_us() -> i64 {
    let (tokio_now, real_now) = (
        tokio::time::Instant::now().into_std(),
        std::time::Instant::now(),
    );
    match tokio_now.checked_duration_since(real_now) {
        Some(ahead) => micros(ahead),
        None => -micros(real_now.duration_since(tokio_now)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn wall_ms() -> i64 {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        i64::try_from(since.as_millis()).unwrap()
    }

    #[tokio::test]
    async fn it_is_the_wall_clock_while_tokio_runs_in_real_time() {
        let before = wall_ms();
        let now = now_ms();
        let after = wall_ms();
        assert!(
            (before..=after).contains(&now),
            "{before} <= {now} <= {after}"
        );
    }

    #[test]
    fn it_is_the_wall_clock_outside_a_runtime() {
        let before = wall_ms();
        let now = now_ms();
        assert!((before..=wall_ms()).contains(&now));
    }

    #[tokio::test(start_paused = true)]
    async fn it_follows_a_paused_clock() {
        let before = now_ms();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let moved = now_ms() - before;
        assert!((3_599_999..3_600_050).contains(&moved), "moved {moved} ms");
        tokio::time::sleep(Duration::from_secs(60)).await;
        let moved = now_ms() - before;
        assert!(
            (3_660_000..3_660_050).contains(&moved),
            "auto-advanced to {moved} ms"
        );
    }
}
