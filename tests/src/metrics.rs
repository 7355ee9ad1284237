//! Custom metrics read out of a report document (long names, as every report reaches a test).

use serde_json::Value;

/// The value custom metric `name` holds under its type `kind` (`number`, `number_list`,
/// `string_list`, `ip_list`); Null when the report does not carry it.
pub fn custom_metric<'a>(report: &'a Value, name: &str, kind: &str) -> &'a Value {
    &report["custom_metrics"][name][0][kind]
}

/// A `number` custom metric as an integer; panics when the report lacks it.
pub fn custom_number(report: &Value, name: &str) -> u64 {
    custom_metric(report, name, "number")
        .as_u64()
        .unwrap_or_else(|| panic!("custom metric {name} missing in {report}"))
}

/// The elements of a list custom metric of type `kind`; panics when the report lacks it.
pub fn custom_list<'a>(report: &'a Value, name: &str, kind: &str) -> &'a [Value] {
    custom_metric(report, name, kind)
        .as_array()
        .unwrap_or_else(|| panic!("custom metric {name} missing in {report}"))
}

/// The names of the custom metrics a report carries, in order.
pub fn custom_names(report: &Value) -> Vec<&str> {
    report["custom_metrics"]
        .as_object()
        .expect("custom metrics")
        .keys()
        .map(String::as_str)
        .collect()
}
