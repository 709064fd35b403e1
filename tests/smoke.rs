use ndarray::array;
use timetape::gradcheck::{gradcheck, GradcheckOptions};
use timetape::{Params, Reduction};

#[test]
fn small_network_matches_finite_differences() {
    let mut params = Params::<f64>::new();
    let w = params
        .add("w", array![[0.3, -0.2, 0.4], [0.1, 0.5, -0.6]])
        .unwrap();
    let b = params.add("b", array![[0.1, -0.1, 0.05]]).unwrap();
    let report = gradcheck(&params, GradcheckOptions::default(), |tape, p| {
        let x = tape.constant(array![[1.0, 2.0], [-0.5, 0.3]])?;
        let wv = tape.param(p, w)?;
        let bv = tape.param(p, b)?;
        let y = tape.matmul(x, wv)?;
        let y = tape.add(y, bv)?;
        let y = tape.tanh(y)?;
        tape.softmax_cross_entropy(y, &[2, 0], None, Reduction::Mean)
    })
    .unwrap();
    assert!(report.max_rel_err() < 1e-8, "{report}");
}
