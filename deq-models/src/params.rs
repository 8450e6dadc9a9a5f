//! Parameter counting, parameter and gradient values.
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
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

/// Initialises every lazily initialised parameter of `module` now, on its device, from the
/// random state as it is now. Burn initialises parameters on first use, and clones share that
/// pending initialisation: without this, the weights would depend on the random state at the
/// first forward pass, and forks of a clone to other devices would initialise the shared
/// parameters on whichever device comes first.
pub fn materialize_params<M: Module>(module: &M) {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// Every float tensor of `module` (parameters and running statistics), flattened, with its
/// path (`core.blocks.0.conv1.v`) and parameter id, in visiting order.
pub fn float_tensors<M: Module>(module: &M) -> Vec<(String, ParamId, Tensor<1>)> {
    struct Collect {
        path: Vec<String>,
        out: Vec<(String, ParamId, Tensor<1>)>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let n = value.shape().num_elements();
            self.out
                .push((self.path.join("."), param.id, value.reshape([n])));
        }
    }
    let mut collect = Collect {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut collect);
    collect.out
}

/// The gradient of every float tensor of `module` in `grads`, flattened in visiting order into
/// one vector (f64), with zeros for a tensor without a gradient (running statistics, unused
/// parameters), so that vectors from different backward passes line up entry for entry.
pub fn gradient_values<M: Module>(module: &M, grads: &GradientsParams) -> Vec<f64> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        out: Vec<f64>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            match self.grads.get::<D>(param.id) {
                Some(g) => self.out.extend(g.into_data().iter::<f64>()),
                None => self
                    .out
                    .extend(std::iter::repeat_n(0.0, param.lazy_shape().num_elements())),
            }
        }
    }
    let mut collect = Collect {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut collect);
    collect.out
}
