//! Checkpoints (`timetape::checkpoint`): a run resumed from a file continues bit for bit
//! as if it had not stopped; what is saved comes back bit-identical; and a damaged,
//! foreign or mismatched file is an error (never a panic) that changes nothing.

use ndarray::{Array2, Array3};
use std::path::PathBuf;
use timetape::bptt::{self, Pi, Truncation, XiSampler};
use timetape::checkpoint::{Checkpoint, Loaded};
use timetape::optim::{Adam, Sgd};
use timetape::rnn::{models, Rnn, Sequence, SequenceLoss, Sizes};
use timetape::{Error, Grads, Params, Scalar};

const T: usize = 6;
const B: usize = 2;
const SIZES: (usize, usize, usize) = (3, 5, 2);

fn sizes() -> Sizes {
    Sizes::new(SIZES.0, SIZES.1, SIZES.2)
}

/// π as a closure (not serializable): segments of at least 3 steps, then a cut with
/// probability 0.3 at every step. Its value depends on the sampler's m, so a restored
/// sampler must have the right m, not only the right random stream.
fn pi() -> Pi {
    Pi::hazard(|m| if m < 3 { 1.0 } else { 0.7 })
}

/// The data of update `u`: inputs (T, B, D) and labels (T, B).
fn chunk<F: Scalar>(u: u64) -> (Array3<F>, Array2<usize>) {
    let mut rng = timetape::init::rng(1000 + u);
    let xs = timetape::init::uniform::<F>((T * B, SIZES.0), 1.0, &mut rng)
        .unwrap()
        .into_shape_with_order((T, B, SIZES.0))
        .unwrap();
    let labels = Array2::from_shape_fn((T, B), |(t, b)| (t * 7 + b * 3 + u as usize) % SIZES.2);
    (xs, labels)
}

enum Opt<F> {
    Sgd(Sgd<F>),
    Adam(Adam<F>),
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sgd,
    Adam,
}

/// Everything a training run carries between updates.
struct Training<F> {
    params: Params<F>,
    cell: Rnn,
    opt: Opt<F>,
    sampler: XiSampler,
    h: Array2<F>,
    grads: Grads<F>,
    step: u64,
}

fn start<F: Scalar>(kind: Kind) -> Training<F> {
    let mut params = Params::new();
    let cell = models::m3(&mut params, sizes(), 11).unwrap();
    let opt = match kind {
        Kind::Sgd => Opt::Sgd(
            Sgd::new(F::of(0.05))
                .unwrap()
                .with_momentum(F::of(0.9))
                .unwrap(),
        ),
        Kind::Adam => Opt::Adam(Adam::new(F::of(0.01)).unwrap()),
    };
    Training {
        grads: Grads::new(&params),
        params,
        cell,
        opt,
        sampler: XiSampler::new(pi(), 5),
        h: Array2::zeros((B, SIZES.1)),
        step: 0,
    }
}

/// One update: randomized truncation on the next chunk, its ξ the next T draws of the
/// carried sampler, from the carried state h; then an optimizer step.
fn update<F: Scalar>(r: &mut Training<F>) {
    let (xs, labels) = chunk::<F>(r.step);
    let xi: Vec<f64> = (0..T).map(|_| r.sampler.next_xi().unwrap()).collect();
    let seq = Sequence::new(xs.view(), SequenceLoss::classes(labels.view())).with_h0(r.h.view());
    let report = bptt::run(
        &r.cell,
        &r.params,
        &seq,
        &bptt::Run::new(Truncation::Pattern(xi)),
    )
    .unwrap();
    match &mut r.opt {
        Opt::Sgd(s) => s.step(&mut r.params, &report.grads).unwrap(),
        Opt::Adam(a) => a.step(&mut r.params, &report.grads).unwrap(),
    }
    r.h = report.h_final;
    r.grads = report.grads;
    r.step += 1;
}

fn checkpoint<F: Scalar>(r: &Training<F>) -> Checkpoint<'_, F> {
    let ck = Checkpoint::new(&r.params).grads(&r.grads);
    let ck = match &r.opt {
        Opt::Sgd(s) => ck.sgd(s),
        Opt::Adam(a) => ck.adam(a),
    };
    ck.sampler(&r.sampler).matrix("h", r.h.view()).step(r.step)
}

/// A run rebuilt from a loaded checkpoint into fresh objects (a model initialized
/// from another seed, whose values the checkpoint overwrites).
fn resume<F: Scalar>(loaded: &Loaded<F>, kind: Kind) -> Training<F> {
    let mut params = Params::new();
    let cell = models::m3(&mut params, sizes(), 999).unwrap();
    loaded.restore_params(&mut params).unwrap();
    let opt = match kind {
        Kind::Sgd => Opt::Sgd(loaded.sgd(&params).unwrap()),
        Kind::Adam => Opt::Adam(loaded.adam(&params).unwrap()),
    };
    Training {
        grads: loaded.grads(&params).unwrap(),
        sampler: loaded.sampler(pi()).unwrap(),
        h: loaded.matrix("h").unwrap(),
        step: loaded.step(),
        params,
        cell,
        opt,
    }
}

/// Parameters by name, for comparing two stores.
fn values<F: Scalar>(params: &Params<F>) -> Vec<(String, Array2<F>)> {
    params
        .ids()
        .map(|id| {
            (
                params.name(id).unwrap().to_string(),
                params.get(id).unwrap().clone(),
            )
        })
        .collect()
}

fn grads_by_name<F: Scalar>(params: &Params<F>, grads: &Grads<F>) -> Vec<(String, Array2<F>)> {
    grads
        .iter()
        .map(|(id, g)| (params.name(id).unwrap().to_string(), g.clone()))
        .collect()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "timetape-checkpoint-{}-{name}.safetensors",
        std::process::id()
    ))
}

fn resume_is_bit_identical<F: Scalar>(kind: Kind, tag: &str) {
    let (n, m) = (4, 5);
    let mut straight = start::<F>(kind);
    for _ in 0..n + m {
        update(&mut straight);
    }

    let mut first = start::<F>(kind);
    for _ in 0..n {
        update(&mut first);
    }
    let path = temp_path(tag);
    checkpoint(&first).save(&path).unwrap();
    drop(first);
    let loaded = Loaded::<F>::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut resumed = resume(&loaded, kind);
    assert_eq!(resumed.step, n);
    for _ in 0..m {
        update(&mut resumed);
    }

    assert_eq!(values(&resumed.params), values(&straight.params));
    assert_eq!(resumed.h, straight.h);
    assert_eq!(
        grads_by_name(&resumed.params, &resumed.grads),
        grads_by_name(&straight.params, &straight.grads)
    );
    assert_eq!(resumed.step, straight.step);
    for _ in 0..50 {
        assert_eq!(
            resumed.sampler.next_xi().unwrap(),
            straight.sampler.next_xi().unwrap()
        );
    }
    // A run that has moved on: the comparison can fail.
    assert_ne!(values(&resumed.params), values(&start::<F>(kind).params));
}

#[test]
fn resume_is_bit_identical_sgd_momentum_f64() {
    resume_is_bit_identical::<f64>(Kind::Sgd, "resume-sgd-f64");
}

#[test]
fn resume_is_bit_identical_sgd_momentum_f32() {
    resume_is_bit_identical::<f32>(Kind::Sgd, "resume-sgd-f32");
}

#[test]
fn resume_is_bit_identical_adam_f64() {
    resume_is_bit_identical::<f64>(Kind::Adam, "resume-adam-f64");
}

#[test]
fn resume_is_bit_identical_adam_f32() {
    resume_is_bit_identical::<f32>(Kind::Adam, "resume-adam-f32");
}

/// A run after 3 updates with SGD and one with Adam, saved with both optimizers.
fn trained<F: Scalar>() -> (Training<F>, Adam<F>) {
    let mut r = start::<F>(Kind::Sgd);
    let mut adam = Adam::new(F::of(0.02))
        .unwrap()
        .with_betas(F::of(0.8), F::of(0.99), F::of(1e-7))
        .unwrap();
    for _ in 0..3 {
        update(&mut r);
        adam.step(&mut r.params.clone(), &r.grads).unwrap();
    }
    (r, adam)
}

fn round_trip_is_bit_identical<F: Scalar>() {
    let (r, adam) = trained::<F>();
    let Opt::Sgd(sgd) = &r.opt else {
        unreachable!()
    };
    let extra = Array2::from_shape_fn((2, 3), |(i, j)| F::of(i as f64 - 0.1 * j as f64));
    let bytes = checkpoint(&r)
        .adam(&adam)
        .matrix("extra", extra.view())
        .matrix("empty", Array2::<F>::zeros((0, 4)).view())
        .to_bytes()
        .unwrap();
    let loaded = Loaded::<F>::from_bytes(&bytes).unwrap();

    let mut params = Params::new();
    models::m3::<F>(&mut params, sizes(), 999).unwrap();
    assert_ne!(values(&params), values(&r.params));
    loaded.restore_params(&mut params).unwrap();
    assert_eq!(values(&params), values(&r.params));
    let grads = loaded.grads(&params).unwrap();
    assert_eq!(
        grads_by_name(&params, &grads),
        grads_by_name(&r.params, &r.grads)
    );
    let sgd2 = loaded.sgd(&params).unwrap();
    let adam2 = loaded.adam(&params).unwrap();
    let mut sampler2 = loaded.sampler(pi()).unwrap();
    assert_eq!(loaded.matrix("h").unwrap(), r.h);
    assert_eq!(loaded.matrix("extra").unwrap(), extra);
    assert_eq!(loaded.matrix("empty").unwrap().dim(), (0, 4));
    assert_eq!(loaded.step(), 3);

    // Saved again, the loaded objects give the same bytes: hyperparameters, velocities,
    // moments, step counts and the sampler's position all came back bit for bit.
    let again = Checkpoint::new(&params)
        .grads(&grads)
        .sgd(&sgd2)
        .sampler(&sampler2)
        .matrix("h", r.h.view())
        .step(3)
        .adam(&adam2)
        .matrix("extra", extra.view())
        .matrix("empty", Array2::<F>::zeros((0, 4)).view())
        .to_bytes()
        .unwrap();
    assert_eq!(again, bytes);

    // And they act alike: the same steps give the same parameters, the same draws.
    let (mut p1, mut p2) = (r.params.clone(), params.clone());
    let (mut s1, mut s2) = (sgd.clone(), sgd2);
    let (mut a1, mut a2) = (adam.clone(), adam2);
    for _ in 0..3 {
        s1.step(&mut p1, &r.grads).unwrap();
        s2.step(&mut p2, &grads).unwrap();
        a1.step(&mut p1, &r.grads).unwrap();
        a2.step(&mut p2, &grads).unwrap();
    }
    assert_eq!(values(&p1), values(&p2));
    let mut sampler1 = r.sampler.clone();
    for _ in 0..100 {
        assert_eq!(sampler1.next_xi().unwrap(), sampler2.next_xi().unwrap());
    }
}

#[test]
fn round_trip_is_bit_identical_f64() {
    round_trip_is_bit_identical::<f64>();
}

#[test]
fn round_trip_is_bit_identical_f32() {
    round_trip_is_bit_identical::<f32>();
}

#[test]
fn save_and_open_round_trip_through_a_file() {
    let (r, _) = trained::<f64>();
    let path = temp_path("file-round-trip");
    checkpoint(&r).save(&path).unwrap();
    let from_file = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(from_file, checkpoint(&r).to_bytes().unwrap());
}

/// A small checkpoint (one SGD run, 3 updates) and a target store to load it into.
fn small() -> (Vec<u8>, Params<f64>) {
    let (r, adam) = trained::<f64>();
    let bytes = checkpoint(&r).adam(&adam).to_bytes().unwrap();
    let mut target = Params::new();
    models::m3::<f64>(&mut target, sizes(), 999).unwrap();
    (bytes, target)
}

/// Loads `bytes` as far as it goes, into `target`; the error, if any.
fn try_load(bytes: &[u8], target: &mut Params<f64>) -> Result<(), Error> {
    let loaded = Loaded::<f64>::from_bytes(bytes)?;
    loaded.restore_params(target)?;
    loaded.grads(target)?;
    loaded.sgd(target)?;
    loaded.adam(target)?;
    loaded.sampler(pi())?;
    loaded.matrix("h")?;
    Ok(())
}

#[track_caller]
fn assert_bad_file(e: Error, what: &str) -> String {
    match e {
        Error::BadFile { key, .. } => {
            assert!(!key.is_empty(), "{what}: BadFile without a key");
            key
        }
        e => panic!("{what}: expected BadFile, got {e:?}"),
    }
}

#[test]
fn every_truncation_is_a_bad_file_error_and_loads_nothing() {
    let (bytes, mut target) = small();
    let before = values(&target);
    assert!(try_load(&bytes, &mut target.clone()).is_ok());
    for len in 0..bytes.len() {
        let e = try_load(&bytes[..len], &mut target).expect_err("a truncated file loaded");
        assert_bad_file(e, &format!("prefix of {len} bytes"));
        assert_eq!(values(&target), before);
    }
}

#[test]
fn every_flipped_byte_is_a_bad_file_error_and_loads_nothing() {
    let (bytes, mut target) = small();
    let before = values(&target);
    // Every position, header and data, with three different flips.
    for at in 0..bytes.len() {
        for mask in [0x01u8, 0x20, 0x80] {
            let mut bad = bytes.clone();
            bad[at] ^= mask;
            let e = try_load(&bad, &mut target).expect_err("a corrupted file loaded");
            assert_bad_file(e, &format!("byte {at} ^ {mask:#04x}"));
            assert_eq!(values(&target), before);
        }
    }
}

#[test]
fn a_flipped_data_byte_names_its_tensor() {
    let (bytes, mut target) = small();
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x10;
    let key = assert_bad_file(try_load(&bad, &mut target).unwrap_err(), "last byte");
    assert!(key.contains('/'), "key {key:?} is not a tensor's");
}

#[test]
fn an_empty_file_is_a_bad_file_error() {
    let (_, mut target) = small();
    let before = values(&target);
    assert_bad_file(try_load(&[], &mut target).unwrap_err(), "empty bytes");
    let path = temp_path("empty");
    std::fs::write(&path, b"").unwrap();
    let e = Loaded::<f64>::open(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_bad_file(e, "empty file");
    assert_eq!(values(&target), before);
}

#[test]
fn a_missing_file_is_an_io_error() {
    let e = Loaded::<f64>::open(temp_path("does-not-exist")).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Io {
                op: "Loaded::open",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("does-not-exist"), "{e}");
    let (r, _) = trained::<f64>();
    let e = checkpoint(&r)
        .save(temp_path("no-such-dir").join("x.safetensors"))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Io {
                op: "Checkpoint::save",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_file_of_the_other_float_type_is_a_bad_file_error() {
    let (r32, _) = trained::<f32>();
    let bytes32 = checkpoint(&r32).to_bytes().unwrap();
    let e = Loaded::<f64>::from_bytes(&bytes32).unwrap_err();
    assert_eq!(assert_bad_file(e, "f32 as f64"), "scalar");
    let (r64, _) = trained::<f64>();
    let bytes64 = checkpoint(&r64).to_bytes().unwrap();
    let e = Loaded::<f32>::from_bytes(&bytes64).unwrap_err();
    assert_eq!(assert_bad_file(e, "f64 as f32"), "scalar");
}

#[test]
fn another_parameter_name_or_shape_is_a_bad_file_error_naming_the_key() {
    let (bytes, _) = small();
    let loaded = Loaded::<f64>::from_bytes(&bytes).unwrap();
    let mut reference = Params::new();
    models::m3::<f64>(&mut reference, sizes(), 3).unwrap();
    let names: Vec<String> = values(&reference).into_iter().map(|(n, _)| n).collect();

    // Same names, one shape differs (another hidden width changes every W and b_h).
    let mut wider = Params::new();
    models::m3::<f64>(&mut wider, Sizes::new(3, 6, 2), 3).unwrap();
    let before = values(&wider);
    let key = assert_bad_file(loaded.restore_params(&mut wider).unwrap_err(), "shape");
    assert!(key.starts_with("params/"), "{key}");
    assert_eq!(values(&wider), before);
    for e in [
        loaded.sgd(&wider).unwrap_err(),
        loaded.adam(&wider).unwrap_err(),
        loaded.grads(&wider).unwrap_err(),
    ] {
        assert_bad_file(e, "state of another shape");
    }

    // One parameter renamed: the store lacks one of the file's and has one it lacks.
    let mut renamed = Params::new();
    for (i, (name, value)) in values(&reference).into_iter().enumerate() {
        let name = if i == 0 {
            format!("{name}_renamed")
        } else {
            name
        };
        renamed.add(name, value).unwrap();
    }
    let before = values(&renamed);
    let key = assert_bad_file(loaded.restore_params(&mut renamed).unwrap_err(), "name");
    assert!(key == format!("params/{}_renamed", names[0]) || key == format!("params/{}", names[0]));
    assert_eq!(values(&renamed), before);
    let key = assert_bad_file(loaded.adam(&renamed).unwrap_err(), "adam, renamed");
    assert!(key.ends_with(&names[0]), "{key}");

    // One parameter more in the store, one fewer.
    let mut more = reference.clone();
    more.add("extra", Array2::zeros((1, 1))).unwrap();
    let before = values(&more);
    let key = assert_bad_file(loaded.restore_params(&mut more).unwrap_err(), "more");
    assert_eq!(key, "params/extra");
    assert_eq!(values(&more), before);
    let mut fewer = Params::new();
    for (name, value) in values(&reference).into_iter().skip(1) {
        fewer.add(name, value).unwrap();
    }
    let before = values(&fewer);
    let key = assert_bad_file(loaded.restore_params(&mut fewer).unwrap_err(), "fewer");
    assert_eq!(key, format!("params/{}", names[0]));
    assert_eq!(values(&fewer), before);
}

#[test]
fn what_was_not_saved_is_a_bad_file_error() {
    let mut params = Params::<f64>::new();
    params.add("w", Array2::ones((2, 2))).unwrap();
    let loaded = Loaded::<f64>::from_bytes(&Checkpoint::new(&params).to_bytes().unwrap()).unwrap();
    assert_eq!(
        assert_bad_file(loaded.sgd(&params).unwrap_err(), "sgd"),
        "sgd"
    );
    assert_eq!(
        assert_bad_file(loaded.adam(&params).unwrap_err(), "adam"),
        "adam"
    );
    assert_eq!(
        assert_bad_file(loaded.grads(&params).unwrap_err(), "grads"),
        "grads"
    );
    assert_eq!(
        assert_bad_file(loaded.sampler(pi()).unwrap_err(), "sampler"),
        "sampler"
    );
    assert_eq!(
        assert_bad_file(loaded.matrix("h").unwrap_err(), "h"),
        "state/h"
    );
    assert_eq!(loaded.step(), 0);
}

#[test]
fn saving_state_of_another_store_or_duplicate_matrices_is_an_error() {
    let mut a = Params::<f64>::new();
    a.add("w", Array2::ones((1, 2))).unwrap();
    let mut b = Params::<f64>::new();
    let wb = b.add("w", Array2::ones((1, 2))).unwrap();
    let mut gb = Grads::new(&b);
    gb.accumulate(wb, Array2::ones((1, 2)).view()).unwrap();
    let e = Checkpoint::new(&a).grads(&gb).to_bytes().unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let h = Array2::<f64>::zeros((1, 1));
    let e = Checkpoint::new(&a)
        .matrix("h", h.view())
        .matrix("h", h.view())
        .to_bytes()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
}
