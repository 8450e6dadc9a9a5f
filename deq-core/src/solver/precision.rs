//! How Broyden stores its steps.
use serde::{Deserialize, Serialize};

/// The storage of the steps of Broyden's inverse ([`super::StepInverse`]). Every iteration's
/// product reads all of them once, so their bytes are most of that product's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepPrecision {
    /// In the iterates' own dtype: the matrix of the steps the solve took.
    #[default]
    Full,
    /// In `f16`, each step divided by a power of two that puts its largest entry in
    /// `[2¹⁴, 2¹⁵)`: half the bytes of `f32`. The matrix is that of the steps rounded to 11
    /// significant bits (relative error ≤ 2⁻¹¹ per entry); the iterates still move by the
    /// `f32` steps. Where the host kernels run (flex, `f32` iterates without autodiff);
    /// elsewhere the steps keep the iterates' dtype, as with [`StepPrecision::Full`]
    /// ([`super::StepInverse::precision`] says which).
    Half,
}

impl StepPrecision {
    /// `full` or `half`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Half => "half",
        }
    }
}

impl std::str::FromStr for StepPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Self::Full),
            "half" => Ok(Self::Half),
            other => Err(format!("unknown step precision {other:?} (full or half)")),
        }
    }
}
