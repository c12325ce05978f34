//! Redis GET, 64 tasks, against a redis-server this program starts on a
//! free loopback port: conpool's `Redis` beside one shared
//! `MultiplexedConnection` (no pool), bb8-redis and deadpool-redis, in
//! ops/s and p99 latency, one run side by side.
//!
//! `cargo run --release -p conpool-bench --bin redis-compare [-- --write]`:
//! prints the report's section; with `--write`, also puts it into
//! BENCHMARKS.md at the workspace root, in place of the one there (the
//! `compare` binary keeps it when it rewrites the file).

use std::sync::Arc;
use std::time::Duration;

use conpool_bench::redis_get::{self, POOL_SIZE, RedisServer, Subject};
use conpool_bench::report::{self, Machine};

const TASKS: usize = 64;
const PER_TASK: usize = 1000;
const ROUNDS: usize = 11;

/// Why every subject's sockets are set alike, and what was found where
/// they were not (from the runs of 2026-12-01; see BENCHMARKS.md).
const SOCKETS_NOTE: &str = "Every subject's TCP sockets set `TCP_NODELAY`, as conpool's do by default (`tcp_nodelay`). redis-rs leaves Nagle's algorithm on unless told, and with it on this load's GETs from many tasks leave in fewer segments: on this machine that alone doubled the shared connection's GETs/s with one tokio worker. The earlier runs of this section left the shared connection and the other pools on redis-rs's default while conpool set `TCP_NODELAY`, and so measured the socket option, not the pools: conpool at 0.69–0.95 of the shared connection then. A user who wants Nagle's batching sets `tcp_nodelay(false)` on conpool's config. With one tokio worker (`redis-compare --workers 1`, which prints figures only), runs on 2026-12-01 gave conpool 0.91 and 0.96 of the shared connection per round.";

/// For a run that misses the floor target.
const WHY_SHORT_OF_THE_FLOOR: &str = "Where the second target is missed, why: what conpool adds to each GET is a share's get and drop, two turns of the share set's lock and a reference count on lines both workers write (section 8 counts the instructions); the rounds' ratios (the min–max above) show how far this shared 2-core machine swings beside that.";

struct Row {
    name: &'static str,
    ops: report::Figure,
    p99_us: report::Figure,
}

/// What was measured: every subject's row, and conpool's rate over the
/// shared connection's in each round, the shared connection timed just
/// before and just after conpool (their mean), so that the machine's
/// drift within a round falls on both sides of the ratio alike.
struct Measured {
    rows: Vec<Row>,
    floor_ratio: report::Figure,
}

fn main() {
    let mut write = false;
    let mut only: Option<String> = None;
    let mut workers = 2;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--write" => write = true,
            // For a profiler: one subject's rounds, figures only.
            "--only" => match args.next() {
                Some(name) => only = Some(name),
                None => usage_error("--only needs NAME (a prefix of a subject's name)"),
            },
            // The section is written for 2; other counts are for study.
            "--workers" => match args.next().map(|n| (n.parse::<usize>(), n)) {
                Some((Ok(n), _)) if n > 0 => workers = n,
                Some((_, given)) => usage_error(&format!(
                    "--workers is {given:?}; it must be a whole number of tokio worker threads, at least 1"
                )),
                None => usage_error("--workers needs N (tokio worker threads, at least 1)"),
            },
            "-h" | "--help" => {
                println!(
                    "redis-compare [--write] [--only NAME] [--workers N]: Redis GET through conpool, bb8-redis, deadpool-redis and one shared connection"
                );
                return;
            }
            other => usage_error(&format!("unknown argument {other:?} (try --help)")),
        }
    }
    let server = match RedisServer::start() {
        Ok(server) => server,
        Err(why) => {
            eprintln!("redis-compare: {why}");
            std::process::exit(1);
        }
    };
    let rt = conpool_bench::load::runtime(workers);
    let measured = rt.block_on(async {
        let subjects: Vec<_> = Subject::all(&server)
            .await
            .into_iter()
            .filter(|(name, _)| {
                only.as_ref()
                    .is_none_or(|only| name.starts_with(only.as_str()))
            })
            .map(|(name, s)| (name, Arc::new(s)))
            .collect();
        // Warm every pool to its working set before any round counts.
        for (_, subject) in &subjects {
            redis_get::round(subject, TASKS, PER_TASK / 5).await;
        }
        let mut ops = vec![Vec::new(); subjects.len()];
        let mut p99 = vec![Vec::new(); subjects.len()];
        let mut floor_ratio = Vec::new();
        // Rounds interleave the subjects, so that a slow patch of the
        // machine falls on all of them alike; the shared connection (the
        // first) runs again right after conpool (the second).
        for round in 0..ROUNDS {
            eprintln!("round {}/{ROUNDS}", round + 1);
            for i in 0..subjects.len() {
                let r = redis_get::round(&subjects[i].1, TASKS, PER_TASK).await;
                ops[i].push(r.ops_per_sec);
                p99[i].push(r.p99.as_secs_f64() * 1e6);
                if i == 1 && only.is_none() {
                    let before = ops[0][ops[0].len() - 1];
                    let again = redis_get::round(&subjects[0].1, TASKS, PER_TASK).await;
                    ops[0].push(again.ops_per_sec);
                    p99[0].push(again.p99.as_secs_f64() * 1e6);
                    floor_ratio.push(r.ops_per_sec / ((before + again.ops_per_sec) / 2.0));
                }
            }
        }
        let rows = subjects
            .iter()
            .zip(ops.into_iter().zip(p99))
            .map(|((name, _), (ops, p99))| Row {
                name,
                ops: report::Figure::of(ops),
                p99_us: report::Figure::of(p99),
            })
            .collect::<Vec<_>>();
        Measured {
            rows,
            floor_ratio: report::Figure::of(if floor_ratio.is_empty() {
                vec![f64::NAN]
            } else {
                floor_ratio
            }),
        }
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    let rows = &measured.rows;
    if only.is_some() || workers != 2 {
        for r in rows {
            println!(
                "{}: {} GETs/s, p99 {:.0} µs",
                r.name,
                report::thousands(r.ops.median),
                r.p99_us.median
            );
        }
        let ratio = &measured.floor_ratio;
        if !ratio.median.is_nan() {
            println!(
                "conpool ÷ the shared connection, per round: {:.3} ({:.3}–{:.3}), {workers} worker(s)",
                ratio.median, ratio.min, ratio.max
            );
        }
        return;
    }
    let section = section(&measured);
    print!("{section}");
    if write {
        let path = report::workspace_root().join("BENCHMARKS.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, report::REDIS.with_section(&doc, &section))
            .expect("write BENCHMARKS.md");
        eprintln!("wrote the section into {}", path.display());
    }
}

/// Bad arguments: one line saying which and why, exit code 2.
fn usage_error(why: &str) -> ! {
    eprintln!("redis-compare: {why}");
    std::process::exit(2);
}

fn section(measured: &Measured) -> String {
    let rows = &measured.rows[..];
    let ratio = &measured.floor_ratio;
    use std::fmt::Write;
    let root = report::workspace_root();
    let machine = Machine::detect();
    let (date, time) = report::utc_now();
    let versions = report::locked_versions(
        &root,
        &[
            "conpool",
            "redis",
            "bb8",
            "bb8-redis",
            "deadpool",
            "deadpool-redis",
            "tokio",
        ],
    );
    let server = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let conpool = &rows[1];
    let pools_best = rows[3..].iter().map(|r| r.ops.median).fold(0.0, f64::max);

    let mut md = String::new();
    let _ = writeln!(md, "{}", report::REDIS.begin);
    let _ = writeln!(
        md,
        "## 9. Redis GET: 64 tasks, one key, a real redis-server\n"
    );
    let _ = writeln!(
        md,
        "Run {date} {time} UTC on {} ({} cores), {}, {}; conpool at {}. {server}.\n",
        machine.cpu_model,
        machine.cpus,
        machine.rustc,
        machine.kernel,
        report::conpool_revision(&root)
    );
    let _ = writeln!(
        md,
        "Versions: {}.\n",
        versions
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "{TASKS} tasks × {PER_TASK} GETs of one 16-byte value, each GET on a connection got \
         for it (conpool: a share; bb8, deadpool: a lease of one of {POOL_SIZE} connections) \
         and given back; the shared connection is cloned into each task once. Median of \
         {ROUNDS} interleaved rounds (min–max), 2 tokio workers, redis-server on the same \
         2 cores. In each round the shared connection runs twice, just before and just \
         after conpool, and conpool's rate is divided by the mean of those two, so that a \
         swing of the machine between rounds (the rows' min–max) falls on both sides of \
         each ratio; the second target is judged on the median of those per-round ratios.\n"
    );
    let _ = writeln!(md, "| subject | GETs/s | p99 latency (µs) |");
    let _ = writeln!(md, "| --- | ---: | ---: |");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} ({}–{}) | {:.0} ({:.0}–{:.0}) |",
            r.name,
            report::thousands(r.ops.median),
            report::thousands(r.ops.min),
            report::thousands(r.ops.max),
            r.p99_us.median,
            r.p99_us.min,
            r.p99_us.max
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "| target | figure | verdict |");
    let _ = writeln!(md, "| --- | --- | --- |");
    let _ = writeln!(
        md,
        "| ahead of every pool | conpool {} GETs/s, the best other pool {} | {} |",
        report::thousands(conpool.ops.median),
        report::thousands(pools_best),
        report::verdict(conpool.ops.median > pools_best)
    );
    let _ = writeln!(
        md,
        "| ≥ 0.95 of one shared connection | {:.3} ({:.3}–{:.3}) per round | {} |",
        ratio.median,
        ratio.min,
        ratio.max,
        report::verdict(ratio.median >= 0.95)
    );
    if ratio.median.is_nan() || ratio.median < 0.95 {
        let _ = writeln!(md, "\n{WHY_SHORT_OF_THE_FLOOR}");
    }
    let _ = writeln!(md, "\n{SOCKETS_NOTE}");
    let _ = writeln!(
        md,
        "\nReproduce: `cargo run --release -p conpool-bench --bin redis-compare -- --write` \
         (needs `redis-server` on PATH; it starts its own on a free loopback port).\n"
    );
    let _ = writeln!(md, "{}", report::REDIS.end);
    md
}
