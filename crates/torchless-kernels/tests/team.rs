//! `with_spinning_workers`: the parallel jobs posted to a spinning team give the results of a
//! serial run (a plain loop, and the scalar int4 kernel on one thread), also nested, outside a
//! pool, with rayon work inside, and a panicking job reaches the caller without a hang.
use torchless_kernels::{
    for_each_chunk_mut, thread_pool, with_spinning_workers, Kernels, MatRef, SimdPath,
};

/// Each chunk `i` of `n` values written with its index and position: what a serial loop gives.
fn fill(data: &mut [u64], chunk: usize) {
    for_each_chunk_mut(data, chunk, |i, c| {
        for (j, v) in c.iter_mut().enumerate() {
            *v = (i * chunk + j) as u64 * 3 + 1;
        }
    });
}

fn check(data: &[u64]) {
    for (k, v) in data.iter().enumerate() {
        assert_eq!(*v, k as u64 * 3 + 1, "value {k}");
    }
}

#[test]
fn jobs_posted_to_the_team_cover_every_chunk_once() {
    let pool = thread_pool(2).unwrap();
    pool.install(|| {
        with_spinning_workers(|| {
            for round in 0..300 {
                let mut data = vec![0u64; 1000 + round];
                fill(&mut data, 7 + round % 5);
                check(&data);
            }
        })
    });
}

#[test]
fn int4_products_on_a_team_equal_the_scalar_kernel_on_one_thread() {
    // 512 x 1024: enough work for `par_segments` to cut it into chunks.
    let (rows, cols) = (512, 1024);
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let packed: Vec<u8> = (0..rows * cols / 2).map(|_| next() as u8).collect();
    let scales: Vec<u16> = (0..rows * cols / 32)
        .map(|_| 0x2000 | (next() as u16 & 0x83ff))
        .collect();
    let x: Vec<f32> = (0..cols)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    let m = MatRef::int4(&packed, &scales, rows, cols).unwrap();
    let mut expected = vec![0.0f32; rows];
    thread_pool(1).unwrap().install(|| {
        Kernels::with_path(SimdPath::Scalar)
            .unwrap()
            .matvec(&m, &x, &mut expected)
            .unwrap()
    });
    let kernels = Kernels::auto();
    let pool = thread_pool(2).unwrap();
    for _ in 0..20 {
        let mut y = vec![f32::NAN; rows];
        let mut ys = [vec![f32::NAN; rows], vec![f32::NAN; rows]];
        pool.install(|| {
            with_spinning_workers(|| {
                kernels.matvec(&m, &x, &mut y).unwrap();
                let [a, b] = &mut ys;
                kernels
                    .matvec_many(&[m, m], &x, &mut [a.as_mut_slice(), b.as_mut_slice()])
                    .unwrap();
            })
        });
        assert_eq!(y, expected);
        assert_eq!(ys[0], expected);
        assert_eq!(ys[1], expected);
    }
}

#[test]
fn nested_outside_a_pool_and_with_rayon_work_inside() {
    // Outside any pool: the global pool's threads join.
    let mut data = vec![0u64; 5000];
    with_spinning_workers(|| {
        fill(&mut data, 13);
        // Nested: runs on the same team.
        with_spinning_workers(|| fill(&mut data, 11));
    });
    check(&data);
    // Rayon work posted inside still completes (the members run it while they wait).
    let pool = thread_pool(2).unwrap();
    let total: u64 = pool.install(|| {
        with_spinning_workers(|| {
            use rayon::prelude::*;
            let mut data = vec![0u64; 3000];
            fill(&mut data, 17);
            check(&data);
            (0..100_000u64).into_par_iter().sum()
        })
    });
    assert_eq!(total, 100_000 * 99_999 / 2);
}

#[test]
fn a_panicking_job_reaches_the_caller_and_the_pool_stays_usable() {
    let pool = thread_pool(2).unwrap();
    for bad in [0, 3, 40] {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                with_spinning_workers(|| {
                    let mut data = vec![0u64; 400];
                    for_each_chunk_mut(&mut data, 8, |i, _| {
                        if i == bad {
                            panic!("chunk {i} fails");
                        }
                    });
                })
            })
        }));
        assert!(result.is_err(), "the panic of chunk {bad} was lost");
        let mut data = vec![0u64; 900];
        pool.install(|| with_spinning_workers(|| fill(&mut data, 9)));
        check(&data);
    }
}
