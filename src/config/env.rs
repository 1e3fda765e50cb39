//! `COHORTFLOW_*` environment variables, one by one, as sources of config
//! values (see [`super::Config::load_with`]).

use super::ENV_PREFIX;

/// One `COHORTFLOW_*` variable as a source of config values.
pub(super) struct EnvVar {
    /// The variable's name, as users set it.
    pub(super) name: String,
    /// The dotted key it sets (`__` separates the levels).
    key: String,
    value: figment::value::Value,
}

impl EnvVar {
    pub(super) fn new(name: &str, text: &str) -> Self {
        let key = name.to_ascii_lowercase().replace("__", ".");
        // Infallible: a text that reads as nothing else is a string.
        let value = text.parse().unwrap_or_else(|_| figment::value::Value::from(text.to_owned()));
        EnvVar { name: format!("{ENV_PREFIX}{}", name.to_ascii_uppercase()), key, value }
    }

    /// The same variable, its value taken as text.
    pub(super) fn into_text(self, text: &str) -> Self {
        EnvVar { value: figment::value::Value::from(text.to_owned()), ..self }
    }
}

impl figment::Provider for EnvVar {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        match figment::util::nest(&self.key, self.value.clone()) {
            figment::value::Value::Dict(_, dict) => Ok(figment::Profile::Default.collect(dict)),
            _ => Err(figment::Error::from(format!("{} names no config key", self.name))),
        }
    }
}
