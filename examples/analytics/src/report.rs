//! The analytics report: a pure function of its parameters, so any instance
//! can resume any stream after a restart.

use serde_json::{Value, json};

/// Traffic sources of the synthetic GA4-style table.
const SOURCES: [&str; 5] = ["google", "direct", "newsletter", "bing", "twitter"];

/// The report covers the `days` days up to this date (days since 1970-01-01:
/// 2024-12-31), so the same parameters always give the same rows.
const LAST_DAY: i64 = 20_088;

/// Result events between two progress updates.
const STATUS_EVERY: u32 = 7;

/// A validated request for a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub report: String,
    pub days: u32,
}

impl Params {
    /// Checks the query parameters; the error is a message for a 400.
    pub fn parse(report: Option<&str>, days: Option<&str>) -> Result<Self, String> {
        let report = report.unwrap_or("traffic");
        if report.is_empty()
            || report.len() > 64
            || !report
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "report must be 1 to 64 letters, digits, '-' or '_', got {report:?}"
            ));
        }
        let days = match days {
            None => 30,
            Some(days) => days
                .parse()
                .ok()
                .filter(|d| (1..=365).contains(d))
                .ok_or_else(|| {
                    format!("days must be a whole number from 1 to 365, got {days:?}")
                })?,
        };
        Ok(Self {
            report: report.to_owned(),
            days,
        })
    }
}

/// One event of the stream: its `event:` name and its JSON `data:`. The
/// event's `id:` is its index in [`events`].
#[derive(Clone, Debug, PartialEq)]
pub struct ReportEvent {
    pub name: &'static str,
    pub data: Value,
}

/// The whole report, in order: a `status` to start, one `result` per day
/// (with a `status` every few days), and a final `complete` with totals.
pub fn events(params: &Params) -> Vec<ReportEvent> {
    let status = |step: &str, percent: u32| ReportEvent {
        name: "status",
        data: json!({ "step": step, "percent": percent }),
    };
    let mut out = vec![status("querying", 0)];
    let (mut sessions, mut users, mut pageviews) = (0u64, 0u64, 0u64);
    for day in 0..params.days {
        let date = date(LAST_DAY - i64::from(params.days - 1 - day));
        let rows: Vec<Value> = SOURCES
            .iter()
            .map(|source| {
                let h = hash(&[params.report.as_bytes(), date.as_bytes(), source.as_bytes()]);
                let s = 50 + h % 950;
                let u = s * (60 + (h >> 16) % 40) / 100;
                let p = s * (100 + (h >> 32) % 400) / 100;
                sessions += s;
                users += u;
                pageviews += p;
                json!({ "date": date, "source": source, "sessions": s, "users": u, "pageviews": p })
            })
            .collect();
        out.push(ReportEvent {
            name: "result",
            data: json!({ "day": day + 1, "rows": rows }),
        });
        if (day + 1) % STATUS_EVERY == 0 && day + 1 < params.days {
            out.push(status("aggregating", (day + 1) * 100 / params.days));
        }
    }
    out.push(ReportEvent {
        name: "complete",
        data: json!({
            "report": params.report,
            "days": params.days,
            "rows": params.days as usize * SOURCES.len(),
            "totals": { "sessions": sessions, "users": users, "pageviews": pageviews },
        }),
    });
    out
}

/// FNV-1a over the parts, then a splitmix64 finaliser.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01.
fn date(days: i64) -> String {
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
