//! Every read loop of the bandwidth probe, side by side: which loop reads fastest on this CPU,
//! with one and two streams per thread, for 1 and 2 threads (or the thread counts given).
//!
//! `cargo run --release -p torchless-kernels --example read_probe -- [MIB] [THREADS...]`

use torchless_kernels::{cpu_path, BandwidthProbe};

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let mut threads: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
    if threads.is_empty() {
        threads = vec![1, 2];
    }
    let probe = BandwidthProbe::new(mib << 20);
    println!(
        "kernels {}, buffer {mib} MiB, median of 5 passes",
        cpu_path()
    );
    println!("| threads | loop | streams | GB/s |");
    println!("|---|---|---|---|");
    for &t in &threads {
        let each = probe.measure_each(t, 5);
        let best = each.iter().map(|l| l.gb_per_s).fold(0.0, f64::max);
        for l in each {
            let mark = if l.gb_per_s == best { " (best)" } else { "" };
            println!(
                "| {t} | {} | {} | {:.1}{mark} |",
                l.read_loop.name(),
                l.streams,
                l.gb_per_s
            );
        }
    }
}
