use burn::tensor::{Device, Tensor};
use deq_core::backward::op::{adjoint_identity, AdjointMap};

#[test]
fn replaces_gradient() {
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device).require_grad();
    let y = x.clone() * 3.0;
    let y = adjoint_identity(y, AdjointMap::new(|g| g * 10.0));
    let loss = y.sum();
    let grads = loss.backward();
    let gx = x.grad(&grads).unwrap();
    println!("{}", gx);
    gx.into_data().assert_eq(&burn::tensor::TensorData::from([[30.0f32, 30.0], [30.0, 30.0]]), true);
}
