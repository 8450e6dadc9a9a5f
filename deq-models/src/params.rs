//! Parameter counting.
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Number of trainable float parameters: every float parameter except the constant scale and
/// shift of non-affine batch norms (stored under `frozen_affine`, see
/// [`BatchNorm2d`](crate::norm::BatchNorm2d)) and batch-norm running statistics.
pub fn trainable_params<M: Module>(module: &M) -> usize {
    struct Count {
        path: Vec<String>,
        total: usize,
    }
    impl ModuleVisitor for Count {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let skipped = ["frozen_affine", "running_mean", "running_var"];
            if !self.path.iter().any(|p| skipped.contains(&p.as_str())) {
                self.total += param.lazy_shape().num_elements();
            }
        }
    }
    let mut count = Count {
        path: Vec::new(),
        total: 0,
    };
    module.visit(&mut count);
    count.total
}
