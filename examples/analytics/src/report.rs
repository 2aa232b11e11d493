//! The analytics report: a pure function of its parameters, so any instance
//! can resume any stream after a restart.
//!
//! Nothing is built ahead: [`Report::event`] computes one event from its
//! index, so a stream holds only its parameters and a position, and resuming
//! after `Last-Event-ID` starts at that index without replaying anything.

use std::fmt::Write;

/// Traffic sources of the synthetic GA4-style table.
pub const SOURCES: [&str; 5] = ["google", "direct", "newsletter", "bing", "twitter"];

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

/// One event of the stream: its `event:` name and its `data:`, a JSON object
/// written directly as text (keys in order, as `serde_json` writes a map).
/// The event's `id:` is its index in the report.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportEvent {
    pub name: &'static str,
    pub data: String,
}

/// One row of the table: a day and a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub date: String,
    pub source: &'static str,
    pub sessions: u64,
    pub users: u64,
    pub pageviews: u64,
}

/// The report, in order: a `status` to start, one `result` per day (with a
/// `status` after every 7 days but the last), and a final
/// `complete` with totals. Holds only its parameters: every event is
/// computed when asked for.
#[derive(Clone, Debug)]
pub struct Report {
    params: Params,
}

/// What the event at an index is.
#[derive(Debug, PartialEq)]
enum Slot {
    Start,
    /// The rows of one day (0-based).
    Day(u32),
    /// Progress after this many days.
    Progress(u32),
    Complete,
}

impl Report {
    pub fn new(params: Params) -> Self {
        Self { params }
    }

    /// The number of events; ids run from 0 to `event_count() - 1`.
    pub fn event_count(&self) -> usize {
        let days = self.params.days as usize;
        // The start, the days, a status after every 7 days but the last, the end.
        1 + days + (days - 1) / STATUS_EVERY as usize + 1
    }

    /// The events from index `start` on, each with its id, computed one at
    /// a time as the iterator is advanced.
    pub fn events_from(self, start: usize) -> impl Iterator<Item = (usize, ReportEvent)> {
        (start..self.event_count())
            .map(move |id| (id, self.event(id).expect("id below event_count")))
    }

    /// The event with this id, or `None` past the end.
    ///
    /// The JSON is written straight into one `String` rather than built as
    /// a `serde_json::Value` tree: one allocation per event instead of about
    /// sixty, which is most of what a stream costs the server per event.
    pub fn event(&self, id: usize) -> Option<ReportEvent> {
        let status = |step: &str, percent: u32| ReportEvent {
            name: "status",
            data: format!(r#"{{"percent":{percent},"step":"{step}"}}"#),
        };
        Some(match self.slot(id)? {
            Slot::Start => status("querying", 0),
            Slot::Day(day) => {
                let mut data = String::with_capacity(512);
                let _ = write!(data, r#"{{"day":{},"rows":["#, day + 1);
                for (i, row) in self.rows(day).iter().enumerate() {
                    if i > 0 {
                        data.push(',');
                    }
                    row.write_json(&mut data);
                }
                data.push_str("]}");
                ReportEvent {
                    name: "result",
                    data,
                }
            }
            Slot::Progress(done) => status("aggregating", done * 100 / self.params.days),
            Slot::Complete => {
                let (mut sessions, mut users, mut pageviews) = (0u64, 0u64, 0u64);
                for row in (0..self.params.days).flat_map(|day| self.rows(day)) {
                    sessions += row.sessions;
                    users += row.users;
                    pageviews += row.pageviews;
                }
                // The name is letters, digits, '-' and '_' (see `Params::parse`),
                // but quote it as JSON all the same.
                let report = serde_json::Value::from(self.params.report.as_str());
                ReportEvent {
                    name: "complete",
                    data: format!(
                        r#"{{"days":{},"report":{report},"rows":{},"totals":{{"pageviews":{pageviews},"sessions":{sessions},"users":{users}}}}}"#,
                        self.params.days,
                        self.params.days as usize * SOURCES.len(),
                    ),
                }
            }
        })
    }

    /// Where index `id` falls: after the start, the days come in blocks of
    /// 7 results and 1 status.
    fn slot(&self, id: usize) -> Option<Slot> {
        let len = self.event_count();
        if id >= len {
            return None;
        }
        if id == 0 {
            return Some(Slot::Start);
        }
        if id == len - 1 {
            return Some(Slot::Complete);
        }
        let block = STATUS_EVERY as usize + 1;
        let (n, k) = ((id - 1) / block, (id - 1) % block);
        let before = (n * STATUS_EVERY as usize) as u32;
        Some(if k < STATUS_EVERY as usize {
            Slot::Day(before + k as u32)
        } else {
            Slot::Progress(before + STATUS_EVERY)
        })
    }

    /// The rows of one day (0-based), one per source.
    pub fn rows(&self, day: u32) -> [Row; SOURCES.len()] {
        let date = date(LAST_DAY - i64::from(self.params.days - 1 - day));
        SOURCES.map(|source| {
            let h = hash(&[
                self.params.report.as_bytes(),
                date.as_bytes(),
                source.as_bytes(),
            ]);
            let sessions = 50 + h % 950;
            Row {
                date: date.clone(),
                source,
                sessions,
                users: sessions * (60 + (h >> 16) % 40) / 100,
                pageviews: sessions * (100 + (h >> 32) % 400) / 100,
            }
        })
    }

    /// The days of the report (for the CSV export).
    pub fn days(&self) -> u32 {
        self.params.days
    }
}

impl Row {
    /// The row as a JSON object (the date and source need no escaping).
    fn write_json(&self, out: &mut String) {
        let _ = write!(
            out,
            r#"{{"date":"{}","pageviews":{},"sessions":{},"source":"{}","users":{}}}"#,
            self.date, self.pageviews, self.sessions, self.source, self.users
        );
    }

    /// `date,source,sessions,users,pageviews` and a newline.
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{}\n",
            self.date, self.source, self.sessions, self.users, self.pageviews
        )
    }
}

/// FNV-1a over the parts, then a splitmix64 finaliser.
pub fn hash(parts: &[&[u8]]) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// An event of the old report: name and JSON value.
    #[derive(Debug, PartialEq)]
    struct OldEvent {
        name: &'static str,
        data: Value,
    }

    /// The report as the example built it before it was lazy (verbatim but
    /// for names): every event of the whole report, built up front. The
    /// lazy report must give exactly these events under exactly these ids,
    /// so clients resume across old and new servers.
    fn eager_events(params: &Params) -> Vec<OldEvent> {
        let status = |step: &str, percent: u32| OldEvent {
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
            out.push(OldEvent {
                name: "result",
                data: json!({ "day": day + 1, "rows": rows }),
            });
            if (day + 1) % STATUS_EVERY == 0 && day + 1 < params.days {
                out.push(status("aggregating", (day + 1) * 100 / params.days));
            }
        }
        out.push(OldEvent {
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

    /// The old report as it went on the wire: `data:` is the value's
    /// `to_string()`. The lazy report must match it byte for byte.
    fn old_wire(params: &Params) -> Vec<ReportEvent> {
        eager_events(params)
            .into_iter()
            .map(|e| ReportEvent {
                name: e.name,
                data: e.data.to_string(),
            })
            .collect()
    }

    /// The whole lazy report from its first event.
    fn events(params: &Params) -> impl Iterator<Item = ReportEvent> {
        Report::new(params.clone()).events_from(0).map(|(_, e)| e)
    }

    fn params(report: &str, days: u32) -> Params {
        Params {
            report: report.into(),
            days,
        }
    }

    #[test]
    fn every_resume_point_gives_the_rest_of_the_full_run() {
        for days in [1, 2, 6, 7, 8, 13, 14, 15, 21, 22, 30] {
            let p = params("resume", days);
            let full = old_wire(&p);
            let report = Report::new(p);
            assert_eq!(report.event_count(), full.len(), "days={days}");
            // Resuming after each id, as Last-Event-ID does, and from the start.
            for start in 0..=full.len() {
                let rest: Vec<(usize, ReportEvent)> = report.clone().events_from(start).collect();
                let expected: Vec<(usize, ReportEvent)> =
                    full.iter().cloned().enumerate().skip(start).collect();
                assert_eq!(rest, expected, "days={days} start={start}");
            }
            assert_eq!(report.event(full.len()), None);
        }
    }

    #[test]
    fn a_year_is_the_same_report_as_before() {
        for days in [364, 365] {
            let p = params("traffic", days);
            assert!(events(&p).eq(old_wire(&p)), "days={days}");
        }
    }

    #[test]
    fn the_report_is_a_pure_function_of_its_parameters() {
        let a: Vec<_> = events(&params("a", 10)).collect();
        assert_eq!(a, events(&params("a", 10)).collect::<Vec<_>>());
        assert_ne!(a, events(&params("b", 10)).collect::<Vec<_>>());
    }

    #[test]
    fn csv_rows_are_the_rows_of_the_full_run() {
        let p = params("csv", 30);
        // The export as it was built from the eager report.
        let mut expected = String::new();
        for e in eager_events(&p).iter().filter(|e| e.name == "result") {
            for row in e.data["rows"].as_array().unwrap() {
                expected += &format!(
                    "{},{},{},{},{}\n",
                    row["date"].as_str().unwrap(),
                    row["source"].as_str().unwrap(),
                    row["sessions"],
                    row["users"],
                    row["pageviews"]
                );
            }
        }
        let report = Report::new(p);
        let csv: String = (0..report.days())
            .flat_map(|day| report.rows(day))
            .map(|row| row.csv())
            .collect();
        assert_eq!(csv, expected);
    }
}
