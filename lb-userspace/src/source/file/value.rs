//! Raw values with their place: any YAML scalar as text, and where a value came from (file,
//! service), so each check names its field. Shared by the readers of the file's sections.

use std::{ops::RangeInclusive, path::Path, str::FromStr};

use serde::{Deserialize, Deserializer, de};

use super::{ConfigError, ParseValueError, parse::*};

/// Any scalar, as text: `port: 80` and `port: "80"` are the same, and a wrong value gets this
/// module's message rather than serde's "invalid type".
pub(super) struct Scalar(pub(super) String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let unexpected = match serde_norway::Value::deserialize(deserializer)? {
            serde_norway::Value::String(s) => return Ok(Scalar(s)),
            serde_norway::Value::Number(n) => return Ok(Scalar(n.to_string())),
            serde_norway::Value::Bool(b) => return Ok(Scalar(b.to_string())),
            serde_norway::Value::Null => de::Unexpected::Unit,
            serde_norway::Value::Sequence(_) => de::Unexpected::Seq,
            serde_norway::Value::Mapping(_) => de::Unexpected::Map,
            serde_norway::Value::Tagged(_) => de::Unexpected::Other("tagged value"),
        };
        Err(de::Error::invalid_type(unexpected, &"a string or a number"))
    }
}

/// Where a value came from, for error messages.
pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) service: &'a str,
}

impl Ctx<'_> {
    pub(super) fn invalid(
        &self,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            service: Some(self.service.to_owned()),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A keyword field (`scheduler` and the like): absent means the default.
    pub(super) fn keyword<T: FromStr<Err = ParseValueError> + Default>(
        &self,
        field: &str,
        raw: Option<Scalar>,
    ) -> Result<T, ConfigError> {
        raw.map_or(Ok(T::default()), |s| {
            s.0.parse()
                .map_err(|e: ParseValueError| self.invalid(field, e.0))
        })
    }

    /// A whole number in `range`; `what` describes the range for the message.
    pub(super) fn number(
        &self,
        field: &str,
        text: &str,
        range: RangeInclusive<u64>,
        what: &str,
    ) -> Result<u64, ConfigError> {
        parse_number(text, range).map_err(|e| {
            let message = match e {
                NumberError::NotANumber => format!("{text:?} is not a whole number; {what}"),
                NumberError::OutOfRange => format!("{text} is out of range; {what}"),
            };
            self.invalid(field, message)
        })
    }
}
