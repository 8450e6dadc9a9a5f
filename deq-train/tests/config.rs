//! Training settings: TOML round trip, architecture overrides, validation naming the field.
use deq_train::train::{TrainConfig, TrainError};

fn parse(text: &str) -> TrainConfig {
    toml::from_str(text).expect("valid settings")
}

#[test]
fn defaults_round_trip_through_toml() {
    let config = TrainConfig::default();
    config.validate().unwrap();
    assert_eq!(parse(&config.to_toml()), config);
    let custom =
        parse("epochs = 3\nbackward = \"implicit:max_iter=12\"\n[mdeq]\nchannels = [16, 16]\n");
    assert_eq!(parse(&custom.to_toml()), custom);
}

#[test]
fn mdeq_table_overrides_the_preset() {
    let config = parse("model = \"small\"\n[mdeq]\nchannels = [16, 32]\ndropout = 0.0\n");
    let model = config.model_config().unwrap();
    assert_eq!(model.channels, vec![16, 32]);
    assert_eq!(model.dropout, 0.0);
    assert_eq!(
        model.head_channels,
        deq_models::MdeqConfig::small().head_channels
    );
    assert_eq!(
        parse("model = \"tiny\"").model_config().unwrap(),
        deq_models::MdeqConfig::tiny()
    );
}

fn field_of(config: &TrainConfig) -> String {
    match config
        .validate()
        .expect_err("invalid settings must be refused")
    {
        TrainError::Config { field, .. } => field.to_string(),
        TrainError::Model(e) => format!("model: {e}"),
        TrainError::Deq(e) => format!("deq: {e}"),
        other => format!("other: {other}"),
    }
}

#[test]
fn invalid_settings_name_the_field() {
    let cases = [
        ("lr = 0.0", "lr"),
        ("lr = -1.0", "lr"),
        ("batch_size = 0", "batch_size"),
        ("epochs = 0", "epochs"),
        ("tol = 0.0", "tol"),
        ("grad_clip = -1.0", "grad_clip"),
        ("weight_decay = nan", "weight_decay"),
        ("backward = \"shine:refine=x\"", "backward"),
        ("solver = \"newton\"", "solver"),
        ("model = \"huge\"", "model: "),
        ("[mdeq]\nexpanse = 2", "mdeq"),
        ("[mdeq]\ngroups = 3", "model: "),
        ("dataset = \"cifar10\"\nrgb32 = true", "rgb32"),
    ];
    for (text, field) in cases {
        let found = field_of(&parse(text));
        assert!(
            found.starts_with(field),
            "`{text}`: reported `{found}`, expected `{field}`"
        );
    }
    assert!(toml::from_str::<TrainConfig>("learning_rate = 1.0").is_err());
}
