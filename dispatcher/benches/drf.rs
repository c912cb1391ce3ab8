//! Throughput of the DRF scheduling core: decisions per second in a steady state where every
//! user keeps work queued and the cluster stays full, so each decision follows a release.
//!
//! Per case: workers of four machine sizes, each warm for a few function keys; every user owns
//! two functions whose demands come from preset sizes (75 possible vectors) and keeps 20 tasks
//! queued (a new one is enqueued for each decision). Running tasks are kept in a FIFO: when it
//! holds more than `window` tasks, or when nothing fits, the oldest is released. `window` is
//! larger than what the cluster holds, so most decisions happen on a saturated cluster, where
//! many users' head tasks fit nowhere. The timed loop includes the enqueue and release calls
//! and building each task's strings; only successful decisions are counted. Each case runs five
//! timed rounds after a warm-up and prints the median rate, per wall-clock second and per
//! CPU-second of this process (from `/proc/self/stat`, meaningful on a machine shared with
//! other work). `DRF_BENCH_STEPS=n` runs a fixed amount of work instead (the first case, `n`
//! steps per round), for comparing instruction counts under `valgrind --tool=callgrind`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dispatcher::drf::{Scheduler, Task};
use schemas::Resources;

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

const MACHINES: [Resources; 4] = [
    Resources::new(8_000, 32_768, 250_000),
    Resources::new(16_000, 65_536, 500_000),
    Resources::new(32_000, 131_072, 1_000_000),
    Resources::new(64_000, 262_144, 2_000_000),
];
const CPU: [u64; 5] = [100, 250, 500, 1000, 2000];
const MEM: [u64; 5] = [128, 256, 512, 1024, 2048];
const DISK: [u64; 3] = [100, 500, 1000];
const FUNCTIONS_PER_USER: usize = 2;
const QUEUED_PER_USER: usize = 20;

struct Case {
    users: usize,
    workers: usize,
    /// Running tasks kept before releasing the oldest.
    window: usize,
}

/// CPU time (user + system) this process used so far, if `/proc` tells.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux configuration that matters here.
    Some(Duration::from_millis(ticks * 10))
}

/// `n` in decimal, without the formatting machinery (task ids are made once per decision).
fn decimal(mut n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    String::from_utf8_lossy(&digits[i..]).into_owned()
}

/// Timed rounds per case; the median is reported.
const ROUNDS: usize = 5;

/// Decisions per wall-clock second and per CPU-second, medians over the rounds.
/// `steps`: a fixed number of steps per round instead of `round_time` (for instruction counts).
fn run(case: &Case, round_time: Duration, steps: Option<u64>) -> (f64, Option<f64>) {
    let mut rng = Rng(0xC010_4FAA_5EED ^ case.users as u64);
    let mut s = Scheduler::new();
    let functions: Vec<Vec<(String, Resources)>> = (0..case.users)
        .map(|u| {
            (0..FUNCTIONS_PER_USER)
                .map(|f| {
                    let d = Resources::new(rng.pick(&CPU), rng.pick(&MEM), rng.pick(&DISK));
                    (format!("u{u}-f{f}@1"), d)
                })
                .collect()
        })
        .collect();
    for w in 0..case.workers {
        let warm: Vec<String> = (0..8)
            .map(|_| {
                let u = (rng.next() % case.users as u64) as usize;
                functions[u][w % FUNCTIONS_PER_USER].0.clone()
            })
            .collect();
        s.upsert_worker(&format!("w{w:05}"), MACHINES[w % MACHINES.len()], &warm);
    }
    let user_ids: Vec<String> = (0..case.users).map(|u| format!("u{u:05}")).collect();
    let mut seq = 0u64;
    let mut new_task = |u: usize, rng: &mut Rng| {
        seq += 1;
        let (key, demand) = &functions[u][(rng.next() % FUNCTIONS_PER_USER as u64) as usize];
        Task::new(decimal(seq), key.as_str(), *demand)
    };
    for (u, id) in user_ids.iter().enumerate() {
        for _ in 0..QUEUED_PER_USER {
            s.enqueue(id, new_task(u, &mut rng)).expect("fresh id");
        }
    }
    // Ids are `u<index>`: no lookup table needed.
    let user_of = |id: &str| -> usize { id[1..].parse().expect("u<index>") };

    let mut window: VecDeque<std::sync::Arc<str>> = VecDeque::with_capacity(case.window + 1);
    let mut step = |s: &mut Scheduler, rng: &mut Rng| -> bool {
        match s.next() {
            Some(d) => {
                let u = user_of(&d.user);
                s.enqueue(&d.user, new_task(u, rng)).expect("fresh id");
                window.push_back(d.task.id);
                if window.len() > case.window {
                    let old = window.pop_front().expect("non-empty");
                    s.release(&old).expect("running");
                }
                true
            }
            None => {
                let old = window
                    .pop_front()
                    .expect("something runs when nothing fits");
                s.release(&old).expect("running");
                false
            }
        }
    };

    // Warm up: fill the cluster and reach the steady state.
    for _ in 0..case.window * 2 {
        step(&mut s, &mut rng);
    }
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..ROUNDS {
        let (start, cpu_start) = (Instant::now(), cpu_time());
        let mut decisions = 0u64;
        let mut taken = 0u64;
        loop {
            for _ in 0..10_000 {
                decisions += u64::from(step(&mut s, &mut rng));
            }
            taken += 10_000;
            if steps.map_or(start.elapsed() >= round_time, |n| taken >= n) {
                break;
            }
        }
        walls.push(decisions as f64 / start.elapsed().as_secs_f64());
        if let Some((a, b)) = cpu_start.zip(cpu_time()) {
            cpus.push(decisions as f64 / (b - a).as_secs_f64().max(1e-3));
        }
    }
    let cpu = (cpus.len() == ROUNDS).then(|| median(&mut cpus));
    (median(&mut walls), cpu)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let round_time = Duration::from_millis(800);
    let cases = [
        Case {
            users: 10_000,
            workers: 1_000,
            window: 60_000,
        },
        Case {
            users: 100,
            workers: 10,
            window: 600,
        },
    ];
    // `DRF_BENCH_STEPS=n`: the first case only, n steps per round, so that a run under
    // `valgrind --tool=callgrind` counts the same work every time.
    let steps: Option<u64> = std::env::var("DRF_BENCH_STEPS")
        .ok()
        .map(|v| v.parse().expect("DRF_BENCH_STEPS is a number"));
    let cases = if steps.is_some() {
        &cases[..1]
    } else {
        &cases[..]
    };
    for case in cases {
        let (wall, cpu) = run(case, round_time, steps);
        let per_cpu = cpu.map_or(String::new(), |c| format!(", {c:.0} per CPU-second"));
        let (users, workers) = (case.users, case.workers);
        println!(
            "drf: {users} users x {workers} workers: {wall:.0} decisions/s \
             (median of {ROUNDS} rounds{per_cpu})"
        );
    }
}
