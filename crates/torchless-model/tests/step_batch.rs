//! `Session::step_batch`: several sessions decoding in one forward pass (a server's continuous
//! batching) generate what `transformers` generates for each prompt alone, with logits
//! bit-identical to each session stepping by itself.

mod common;

use common::{fixtures, read_goldens};
use torchless_model::sampling::argmax;
use torchless_model::{LazyMistral, Mistral, Model, ModelError, Residency, Session};

/// Greedy continuations of `prompts`, all sessions stepping together; session `i` joins after
/// `joins[i]` steps of the others (as requests arrive at a server) and leaves after `steps`
/// tokens of its own. Returns every session's ids and per-step logits.
fn batched_greedy<R: Residency>(
    model: &Model<R>,
    prompts: &[Vec<u32>],
    joins: &[usize],
    steps: usize,
) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let mut sessions: Vec<Session<'_, R>> =
        prompts.iter().map(|_| model.session().unwrap()).collect();
    let mut out: Vec<(Vec<u32>, Vec<Vec<f32>>)> = vec![(Vec::new(), Vec::new()); prompts.len()];
    let mut clock = 0;
    loop {
        // Prefill the sessions that join now: their first token comes from the prompt's logits.
        for (i, session) in sessions.iter_mut().enumerate() {
            if joins[i] == clock {
                let logits = session.prefill(&prompts[i]).unwrap();
                out[i].0.push(argmax(logits));
                out[i].1.push(logits.to_vec());
            }
        }
        let active: Vec<usize> = (0..prompts.len())
            .filter(|&i| joins[i] <= clock && out[i].0.len() < steps)
            .collect();
        if active.is_empty() && joins.iter().all(|&j| j <= clock) {
            return out;
        }
        let tokens: Vec<u32> = active.iter().map(|&i| *out[i].0.last().unwrap()).collect();
        let mut batch: Vec<&mut Session<'_, R>> = sessions
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.contains(i))
            .map(|(_, s)| s)
            .collect();
        Session::step_batch(&mut batch, &tokens).unwrap();
        for (&i, session) in active.iter().zip(&batch) {
            out[i].0.push(argmax(session.logits()));
            out[i].1.push(session.logits().to_vec());
        }
        clock += 1;
    }
}

/// The same continuation, one session alone with `step`.
fn alone<R: Residency>(
    model: &Model<R>,
    prompt: &[u32],
    steps: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut session = model.session().unwrap();
    let mut logits = session.prefill(prompt).unwrap().to_vec();
    let (mut ids, mut rows) = (Vec::new(), Vec::new());
    loop {
        ids.push(argmax(&logits));
        rows.push(logits.clone());
        if ids.len() == steps {
            return (ids, rows);
        }
        logits = session.step(*ids.last().unwrap()).unwrap().to_vec();
    }
}

fn check<R: Residency>(model: &Model<R>, goldens_name: &str, joins: &[usize]) {
    let goldens = read_goldens(&fixtures().join(goldens_name));
    let prompts: Vec<Vec<u32>> = goldens.prompts.iter().map(|p| p.ids.clone()).collect();
    let steps = goldens.shortest_greedy();
    let batched = batched_greedy(model, &prompts, &joins[..prompts.len()], steps);
    for (i, (prompt, (ids, rows))) in goldens.prompts.iter().zip(&batched).enumerate() {
        // The independent reference: transformers' greedy continuation of this prompt alone.
        assert_eq!(
            ids[..],
            prompt.greedy.ids[..steps],
            "{goldens_name} prompt {i}: greedy ids"
        );
        let (alone_ids, alone_rows) = alone(model, &prompt.ids, steps);
        assert_eq!(ids, &alone_ids, "{goldens_name} prompt {i}");
        for (t, (a, b)) in rows.iter().zip(&alone_rows).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{goldens_name} prompt {i} step {t}: logits not bit-identical"
            );
        }
    }
}

const JOINS: [usize; 5] = [0, 0, 3, 7, 11];

#[test]
fn batched_sessions_generate_the_goldens_bit_for_bit() {
    for (model, goldens) in [
        ("small-gqa-int8", "small-gqa-goldens-int8.json"),
        ("small-gqa-f32", "small-gqa-goldens-f32.json"),
        ("small-mha-int8", "small-mha-goldens-int8.json"),
        ("small-mqa-f32", "small-mqa-goldens-f32.json"),
        ("llama-untied-f32", "llama-untied-goldens-f32.json"),
        ("llama-tied-int8", "llama-tied-goldens-int8.json"),
    ] {
        let m = Mistral::load(fixtures().join(format!("{model}.bin"))).unwrap();
        check(&m, goldens, &JOINS);
    }
}

#[test]
fn lazy_models_batch_too() {
    let m = LazyMistral::load(fixtures().join("small-gqa-int8.bin")).unwrap();
    check(&m, "small-gqa-goldens-int8.json", &[0, 1, 2, 5, 0]);
}

#[test]
fn bad_batches_are_refused_and_change_nothing() {
    let model = Mistral::load(fixtures().join("small-gqa-f32.bin")).unwrap();
    let other = Mistral::load(fixtures().join("small-gqa-f32.bin")).unwrap();
    let mut a = model.session().unwrap();
    let mut b = model.session().unwrap();
    a.prefill(&[1, 5, 9]).unwrap();
    b.prefill(&[1, 7]).unwrap();
    let positions = |a: &Session<'_, _>, b: &Session<'_, _>| (a.position(), b.position());
    let err = Session::step_batch(&mut [&mut a, &mut b], &[3]).unwrap_err();
    assert!(matches!(err, ModelError::InvalidOption { .. }), "{err}");
    let err = Session::step_batch(&mut [&mut a, &mut b], &[3, 1_000_000]).unwrap_err();
    assert!(matches!(err, ModelError::InvalidToken { .. }), "{err}");
    let mut c = other.session().unwrap();
    c.prefill(&[1]).unwrap();
    let err = Session::step_batch(&mut [&mut a, &mut c], &[3, 4]).unwrap_err();
    assert!(err.to_string().contains("another model"), "{err}");
    assert_eq!(positions(&a, &b), (3, 2));
    assert_eq!(a.tokens(), &[1, 5, 9]);
    // Full context: a clear error, nothing run.
    let mut full = model
        .session_with(torchless_model::SessionOptions {
            context_len: Some(3),
            ..Default::default()
        })
        .unwrap();
    full.prefill(&[1, 2, 3]).unwrap();
    let err = Session::step_batch(&mut [&mut a, &mut full], &[3, 4]).unwrap_err();
    assert!(matches!(err, ModelError::ContextOverflow { .. }), "{err}");
    assert_eq!(positions(&a, &b), (3, 2));
    // And then a good batch runs.
    Session::step_batch(&mut [&mut a, &mut b], &[3, 4]).unwrap();
    assert_eq!(positions(&a, &b), (4, 3));
    Session::<torchless_model::Resident>::step_batch(&mut [], &[]).unwrap();
}

#[test]
fn sessions_with_f16_and_q8_0_caches_batch_bit_for_bit() {
    // head_dim 32 (Q8_0 blocks fit), window 7: the rings wrap during the 12 steps. Sessions of
    // different cache types step together and match each stepping alone, bit for bit.
    use torchless_model::{KvType, SessionOptions};
    let model = Mistral::load(fixtures().join("small-mha-int8.bin")).unwrap();
    let types = [
        (KvType::F16, KvType::F16),
        (KvType::Q8_0, KvType::Q8_0),
        (KvType::Q8_0, KvType::F16),
        (KvType::F32, KvType::F32),
    ];
    let options = |(k, v): (KvType, KvType)| SessionOptions {
        batch_size: 4,
        cache_type_k: k,
        cache_type_v: v,
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = (0..types.len())
        .map(|i| {
            (0..9 + i as u32)
                .map(|t| (t * 31 + 7 * i as u32) % 700 + 1)
                .collect()
        })
        .collect();
    let steps = 12;
    // Alone.
    let mut want = Vec::new();
    for (&t, prompt) in types.iter().zip(&prompts) {
        let mut session = model.session_with(options(t)).unwrap();
        let mut logits = session.prefill(prompt).unwrap().to_vec();
        let mut rows = vec![logits.clone()];
        for _ in 0..steps {
            logits = session.step(argmax(&logits)).unwrap().to_vec();
            rows.push(logits.clone());
        }
        want.push(rows);
    }
    // Together.
    let mut sessions: Vec<Session<'_, _>> = types
        .iter()
        .map(|&t| model.session_with(options(t)).unwrap())
        .collect();
    let mut last: Vec<Vec<f32>> = sessions
        .iter_mut()
        .zip(&prompts)
        .map(|(s, p)| s.prefill(p).unwrap().to_vec())
        .collect();
    for step in 0..steps {
        let tokens: Vec<u32> = last.iter().map(|l| argmax(l)).collect();
        let mut batch: Vec<&mut Session<'_, _>> = sessions.iter_mut().collect();
        Session::step_batch(&mut batch, &tokens).unwrap();
        for (i, s) in sessions.iter().enumerate() {
            last[i] = s.logits().to_vec();
            let same = last[i]
                .iter()
                .zip(&want[i][step + 1])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{:?} step {step}", types[i]);
        }
    }
}
