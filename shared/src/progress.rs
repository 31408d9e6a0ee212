//! Progress of a long command (a replay, a reconcile): a bar with rate and
//! ETA on a terminal, a plain line every few seconds otherwise (logs, CI),
//! nothing in tests.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live bar on stderr.
    Bar,
    /// A line on stderr at most every `interval`.
    Lines { interval: Duration },
    /// Nothing.
    Quiet,
}

impl ProgressMode {
    /// A bar when stderr is a terminal, lines every five seconds otherwise.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Lines {
                interval: Duration::from_secs(5),
            }
        }
    }
}

/// Counts units of work done (events applied, objects scanned) and shows the
/// count as `mode` says.
#[derive(Debug)]
pub struct ProgressReport {
    mode: ProgressMode,
    bar: ProgressBar,
    /// What is counted, plural: `events`, `objects`.
    unit: &'static str,
    started: Instant,
    last_line: Instant,
    /// Each step's text and start, in order; behind a lock because steps are
    /// shown from `&self`, by code that only reads the report.
    steps: std::sync::Mutex<Vec<(String, Instant)>>,
    /// When [`ProgressReport::finish`] was called: the end of the last step.
    finished: std::sync::OnceLock<Instant>,
}

/// How long one step of a command took.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTime {
    pub step: String,
    pub took: Duration,
}

impl ProgressReport {
    /// A report counting events.
    pub fn new(mode: ProgressMode, what: &str) -> Self {
        Self::counting(mode, what, "events")
    }

    /// A report counting `unit` (plural).
    pub fn counting(mode: ProgressMode, what: &str, unit: &'static str) -> Self {
        let bar = ProgressBar::with_draw_target(
            None,
            match mode {
                ProgressMode::Bar => ProgressDrawTarget::stderr(),
                _ => ProgressDrawTarget::hidden(),
            },
        );
        if mode == ProgressMode::Bar {
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{msg}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, ETA {{eta}})"
                ))
                .expect("the template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        bar.set_message(what.to_owned());
        let now = Instant::now();
        Self {
            mode,
            bar,
            unit,
            started: now,
            last_line: now,
            steps: std::sync::Mutex::new(Vec::new()),
            finished: std::sync::OnceLock::new(),
        }
    }

    /// Replaces the text shown before the count (what is being done now).
    pub fn set_message(&self, what: &str) {
        self.bar.set_message(what.to_owned());
    }

    /// Sets how many there are to do (it may grow as more is found).
    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total.max(self.bar.position()));
    }

    /// Records `done` more.
    pub fn advance(&mut self, done: u64) {
        self.bar.inc(done);
        if let ProgressMode::Lines { interval } = self.mode
            && self.last_line.elapsed() >= interval
        {
            self.last_line = Instant::now();
            eprintln!("{}", self.line());
        }
    }

    /// Shows a step that is not counted in events (switching, comparing),
    /// after the time since the start, so the output shows where time went.
    /// The step lasts until the next one, or until [`ProgressReport::finish`].
    pub fn step(&self, text: &str) {
        self.steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((text.to_owned(), Instant::now()));
        let line = format!("{:>6.1} s  {text}", self.started.elapsed().as_secs_f64());
        match self.mode {
            ProgressMode::Bar => self.bar.println(line),
            ProgressMode::Lines { .. } => eprintln!("{line}"),
            ProgressMode::Quiet => {}
        }
    }

    /// How many done so far.
    pub fn events(&self) -> u64 {
        self.bar.position()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Removes the bar and ends the last step; the caller prints the summary.
    pub fn finish(&self) {
        let _ = self.finished.set(Instant::now());
        self.bar.finish_and_clear();
    }

    /// How long each step took, in order: from its start to the next step's
    /// (the last one to [`ProgressReport::finish`], or to now). Time before
    /// the first step is not in any.
    pub fn step_times(&self) -> Vec<StepTime> {
        let steps = self
            .steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let end = self.finished.get().copied().unwrap_or_else(Instant::now);
        steps
            .iter()
            .enumerate()
            .map(|(i, (step, started))| {
                let next = steps.get(i + 1).map_or(end, |(_, next)| *next);
                StepTime {
                    step: step.clone(),
                    took: next.saturating_duration_since(*started),
                }
            })
            .collect()
    }

    fn line(&self) -> String {
        let done = self.bar.position();
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 {
            done as f64 / seconds
        } else {
            0.0
        };
        let total = self.bar.length().unwrap_or(0);
        let eta = if rate > 0.0 && total > done {
            format!(", ETA {:.0} s", (total - done) as f64 / rate)
        } else {
            String::new()
        };
        let unit = self.unit;
        format!(
            "{}: {done}/{total} {unit}, {seconds:.0} s, {rate:.0} {unit}/s{eta}",
            self.bar.message()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_lasts_until_the_next_and_the_last_until_finish() {
        let report = ProgressReport::new(ProgressMode::Quiet, "test");
        report.step("first");
        std::thread::sleep(Duration::from_millis(20));
        report.step("second");
        std::thread::sleep(Duration::from_millis(5));
        report.finish();
        std::thread::sleep(Duration::from_millis(30));
        let steps = report.step_times();
        assert_eq!(
            steps.iter().map(|s| s.step.as_str()).collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert!(steps[0].took >= Duration::from_millis(20), "{steps:?}");
        // Ended by finish, not by the time the steps are read.
        assert!(steps[1].took >= Duration::from_millis(5), "{steps:?}");
        assert!(steps[1].took < Duration::from_millis(30), "{steps:?}");
    }
}
