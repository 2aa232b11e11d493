//! The realtime figures: active users now, per source. Synthetic and
//! deterministic: event `seq` always has the same figures.

use crate::report::{SOURCES, hash};
use serde_json::{Map, Value, json};

/// Typical active users per source, in the order of [`SOURCES`].
const BASE: [u64; SOURCES.len()] = [240, 160, 60, 45, 30];

/// The `data:` of realtime event `seq`: `{"seq", "active_users", "sources":
/// {"google": n, ...}}`, each source within 70..130 % of its typical level.
pub fn figures(seq: u64) -> Value {
    let mut total = 0;
    let mut sources = Map::new();
    for (source, base) in SOURCES.iter().zip(BASE) {
        let h = hash(&[&seq.to_le_bytes(), source.as_bytes()]);
        let now = base * (70 + h % 61) / 100;
        total += now;
        sources.insert((*source).to_owned(), now.into());
    }
    json!({ "seq": seq, "active_users": total, "sources": sources })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_deterministic_and_add_up() {
        for seq in [0, 1, 2, 1_000, u64::MAX] {
            let f = figures(seq);
            assert_eq!(f, figures(seq));
            assert_eq!(f["seq"], seq);
            let sum: u64 = SOURCES
                .iter()
                .map(|s| f["sources"][s].as_u64().unwrap())
                .sum();
            assert_eq!(f["active_users"], sum);
        }
        assert_ne!(figures(1)["sources"], figures(2)["sources"]);
    }
}
