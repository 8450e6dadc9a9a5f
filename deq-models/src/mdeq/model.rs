//! The MDEQ classifier.
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use deq_core::{Deq, DeqFunction, DeqOutput, StateShape};

use super::MdeqConfig;
use super::core::{MdeqCore, PreparedCore};
use super::head::Head;
use super::stem::Stem;
use crate::error::ModelError;

/// How the state is obtained.
#[derive(Debug, Clone, Copy)]
pub enum MdeqMode<'a> {
    /// Solve for the equilibrium with the given layer (solver and backward mode).
    Equilibrium(&'a Deq),
    /// Pretraining: apply f `layers` times from zero with ordinary backpropagation.
    Unrolled {
        /// Number of applications of f.
        layers: usize,
    },
}

/// Output of [`Mdeq::forward`].
#[derive(Debug, Clone)]
pub struct MdeqOutput {
    /// `[batch, classes]`.
    pub logits: Tensor<2>,
    /// The final state per branch, `[batch, C_i, H_i, W_i]`.
    pub state: Vec<Tensor<4>>,
    /// The equilibrium layer's output (statistics, backward report); `None` when unrolled.
    pub deq: Option<DeqOutput>,
}

/// Multiscale deep equilibrium classifier: `x` `[batch, in, H, W]` → logits.
#[derive(Module, Debug)]
pub struct Mdeq {
    /// Image → injection.
    pub stem: Stem,
    /// The parameters of f.
    pub core: MdeqCore,
    /// States → logits.
    pub head: Head,
    input_channels: usize,
    channels: Vec<usize>,
    downsample_times: usize,
    pretrain_layers: usize,
}

impl MdeqConfig {
    /// Validates the configuration and builds the model on `device` (reference
    /// initialisation: conv weights `N(0, init_std)`, norms weight 1 and bias 0). The weights
    /// are drawn now, from the device's random state (seed it first for reproducible weights).
    pub fn init(&self, device: &Device) -> Result<Mdeq, ModelError> {
        self.validate()?;
        let model = Mdeq {
            stem: Stem::new(self, device),
            core: MdeqCore::new(self, device),
            head: Head::new(self, device),
            input_channels: self.input_channels,
            channels: self.channels.clone(),
            downsample_times: self.downsample_times,
            pretrain_layers: self.pretrain_layers,
        };
        crate::params::materialize_params(&model);
        Ok(model)
    }
}

impl Mdeq {
    /// The configured number of unrolled pretraining layers.
    pub fn pretrain_layers(&self) -> usize {
        self.pretrain_layers
    }

    /// The state's branch shapes for an input of height `h` and width `w` (both divisible by
    /// the size divisor).
    pub fn state_shape(&self, h: usize, w: usize) -> StateShape {
        let (h0, w0) = (h >> self.downsample_times, w >> self.downsample_times);
        StateShape::new(
            self.channels
                .iter()
                .enumerate()
                .map(|(i, &c)| [c, h0 >> i, w0 >> i])
                .collect(),
        )
    }

    /// Checks that `x` (`[batch, in, H, W]`) fits: a non-empty batch, the configured channel
    /// count, and `H`, `W` positive multiples of `2^(downsample_times + branches − 1)`.
    pub fn check_input(&self, x: &Tensor<4>) -> Result<(), ModelError> {
        let [batch, channels, h, w] = x.dims();
        if batch == 0 {
            return Err(ModelError::Input {
                what: "batch size",
                expected: "at least 1".into(),
                found: "0".into(),
            });
        }
        super::config::check_image_shape(
            self.input_channels,
            super::config::size_divisor(self.downsample_times, self.channels.len()),
            [channels, h, w],
        )
    }

    /// f frozen for one forward pass on inputs like `x` (weights normalised, dropout masks
    /// drawn), with its injection `[batch, C0, H0, W0]`.
    pub fn prepare(&self, x: Tensor<4>) -> Result<(PreparedCore, Tensor<4>), ModelError> {
        self.check_input(&x)?;
        let [batch, _, h, w] = x.dims();
        let device = x.device();
        let injection = self.stem.forward(x);
        let core = self.core.prepare(self.state_shape(h, w), batch, &device);
        Ok((core, injection))
    }

    /// `x`: `[batch, in, H, W]` → logits `[batch, classes]` (and the state).
    ///
    /// Training mode follows the tensors: on an autodiff device the dropout masks are drawn
    /// and the layer tracks gradients; `model.valid()` gives the evaluation model.
    pub fn forward(&self, x: Tensor<4>, mode: MdeqMode<'_>) -> Result<MdeqOutput, ModelError> {
        self.forward_with(x, mode, |core| core)
    }

    /// [`Mdeq::forward`] with f replaced by `wrap(f)`, a function on the same flattened state
    /// `[batch, dim]` (used to inject faults into f in reliability tests, or to instrument it).
    pub fn forward_with<F>(
        &self,
        x: Tensor<4>,
        mode: MdeqMode<'_>,
        wrap: impl FnOnce(PreparedCore) -> F,
    ) -> Result<MdeqOutput, ModelError>
    where
        F: DeqFunction<Input = Tensor<4>>,
    {
        let (core, injection) = self.prepare(x)?;
        let shape = core.state_shape().clone();
        let core = wrap(core);
        let batch = injection.dims()[0];
        let z0 = Tensor::<2>::zeros(
            [batch, shape.dim()],
            (&injection.device(), injection.dtype()),
        );
        let (z, deq) = match mode {
            MdeqMode::Equilibrium(deq) => {
                let out = deq.forward(&core, &injection, z0)?;
                (out.z.clone(), Some(out))
            }
            MdeqMode::Unrolled { layers } => {
                let mut z = z0;
                for _ in 0..layers {
                    z = core.forward(z, &injection);
                }
                (z, None)
            }
        };
        let state = shape.unflatten(z)?;
        let logits = self.head.forward(state.clone());
        Ok(MdeqOutput { logits, state, deq })
    }
}
