//! Query parameters of the list routes (`GET /admin/backends`, `GET /instances`): each value
//! checked against its choices, a wrong one answered `400 VALIDATION_ERROR` naming the
//! parameter (an unknown parameter is refused by the query types' `deny_unknown_fields`).

use super::{ApiError, ErrorCode};

fn invalid(param: &str, value: &str, choices: &[&str]) -> ApiError {
    ApiError::new(
        ErrorCode::ValidationError,
        format!(
            "`{param}`: unknown value `{value}` (one of {})",
            choices.join(", ")
        ),
    )
}

/// `value` of `param` among `choices`; absent or empty: `None`.
pub(crate) fn choice<T: Copy>(
    param: &str,
    value: Option<&str>,
    choices: &[(&str, T)],
) -> Result<Option<T>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| Some(*v))
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            invalid(param, value, &names)
        })
}

/// `order=asc|desc`: whether descending (default ascending).
pub(crate) fn descending(order: Option<&str>) -> Result<bool, ApiError> {
    Ok(choice("order", order, &[("asc", false), ("desc", true)])?.unwrap_or(false))
}

/// A free-text filter: empty is no filter.
pub(crate) fn text(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_values_name_the_parameter_and_the_choices() {
        let e = choice("sort", Some("size"), &[("name", 1), ("created", 2)]).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert!(
            e.message.contains("`sort`") && e.message.contains("name, created"),
            "{}",
            e.message
        );
        assert_eq!(
            choice("sort", Some("created"), &[("name", 1), ("created", 2)]).unwrap(),
            Some(2)
        );
        assert_eq!(choice::<u8>("sort", Some(""), &[]).unwrap(), None);
        assert!(descending(Some("desc")).unwrap());
        assert!(!descending(None).unwrap());
        assert!(descending(Some("down")).is_err());
    }
}
