//! Progress of a rebuild: a bar with rate and ETA on a terminal, a plain line
//! every few seconds otherwise (logs, CI), nothing in tests.

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

/// Counts events applied and shows the count as `mode` says.
#[derive(Debug)]
pub struct ProgressReport {
    mode: ProgressMode,
    bar: ProgressBar,
    started: Instant,
    last_line: Instant,
}

impl ProgressReport {
    pub fn new(mode: ProgressMode, what: &str) -> Self {
        let bar = ProgressBar::with_draw_target(
            None,
            match mode {
                ProgressMode::Bar => ProgressDrawTarget::stderr(),
                _ => ProgressDrawTarget::hidden(),
            },
        );
        if mode == ProgressMode::Bar {
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events ({per_sec}, ETA {eta})",
                )
                .expect("the template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        bar.set_message(what.to_owned());
        let now = Instant::now();
        Self {
            mode,
            bar,
            started: now,
            last_line: now,
        }
    }

    /// Sets how many events there are to apply (it grows while catching up).
    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total.max(self.bar.position()));
    }

    /// Records `events` more applied.
    pub fn advance(&mut self, events: u64) {
        self.bar.inc(events);
        if let ProgressMode::Lines { interval } = self.mode
            && self.last_line.elapsed() >= interval
        {
            self.last_line = Instant::now();
            eprintln!("{}", self.line());
        }
    }

    /// Shows a step that is not counted in events (switching, comparing),
    /// after the time since the start, so the output shows where time went.
    pub fn step(&self, text: &str) {
        let line = format!("{:>6.1} s  {text}", self.started.elapsed().as_secs_f64());
        match self.mode {
            ProgressMode::Bar => self.bar.println(line),
            ProgressMode::Lines { .. } => eprintln!("{line}"),
            ProgressMode::Quiet => {}
        }
    }

    /// Events applied so far.
    pub fn events(&self) -> u64 {
        self.bar.position()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Removes the bar; the caller prints the summary.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
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
        format!(
            "{}: {done}/{total} events, {seconds:.0} s, {rate:.0} events/s{eta}",
            self.bar.message()
        )
    }
}
