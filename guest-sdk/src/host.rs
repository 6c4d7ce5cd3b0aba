//! Where the service modules' calls go. Inside a wasm component: the host's
//! imports. In a native build with the `testing` feature: the
//! [`MockHost`](crate::testing::MockHost) running the code on this thread.
//! Everything above this module is the same in both.

#[cfg(not(all(feature = "testing", not(target_arch = "wasm32"))))]
mod routes {
    use crate::ServiceError;
    use crate::bindings::capsule::plugin as raw;
    use crate::log::Level;

    pub(crate) fn log(level: Level, message: &str) -> Result<(), ServiceError> {
        raw::log::log(level, message)
    }

    pub(crate) fn config_get(key: &str) -> Result<Option<String>, ServiceError> {
        raw::config::get(key)
    }

    pub(crate) fn config_get_all() -> Result<Vec<(String, String)>, ServiceError> {
        raw::config::get_all()
    }

    pub(crate) fn config_get_json() -> Result<String, ServiceError> {
        raw::config::get_json()
    }

    pub(crate) fn kv_get(key: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        raw::kv::get(key)
    }

    pub(crate) fn kv_set(key: &str, value: &[u8]) -> Result<(), ServiceError> {
        raw::kv::set(key, value)
    }

    pub(crate) fn kv_delete(key: &str) -> Result<bool, ServiceError> {
        raw::kv::delete(key)
    }

    pub(crate) fn kv_list_keys(prefix: &str) -> Result<Vec<String>, ServiceError> {
        raw::kv::list_keys(prefix)
    }

    pub(crate) fn kv_increment(key: &str, delta: i64) -> Result<i64, ServiceError> {
        raw::kv::increment(key, delta)
    }

    pub(crate) fn kv_compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, ServiceError> {
        raw::kv::compare_and_swap(key, expected, new)
    }

    pub(crate) fn kv_set_with_ttl(
        key: &str,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<(), ServiceError> {
        raw::kv::set_with_ttl(key, value, ttl_ms)
    }

    pub(crate) fn kv_get_many(keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, ServiceError> {
        raw::kv::get_many(keys)
    }

    pub(crate) fn kv_set_many(entries: &[(String, Vec<u8>)]) -> Result<(), ServiceError> {
        raw::kv::set_many(entries)
    }

    pub(crate) fn kv_list_keys_page(
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<String>, Option<String>), ServiceError> {
        raw::kv::list_keys_page(prefix, after, limit).map(|page| (page.keys, page.next))
    }

    pub(crate) fn publish(topic: &str, payload: &[u8]) -> Result<(), ServiceError> {
        raw::events::publish(topic, payload)
    }

    pub(crate) fn metrics_counter_add(
        name: &str,
        labels: &[String],
        value: f64,
    ) -> Result<(), ServiceError> {
        raw::metrics::counter_add(name, labels, value)
    }

    pub(crate) fn metrics_gauge_set(
        name: &str,
        labels: &[String],
        value: f64,
    ) -> Result<(), ServiceError> {
        raw::metrics::gauge_set(name, labels, value)
    }

    pub(crate) fn metrics_gauge_add(
        name: &str,
        labels: &[String],
        value: f64,
    ) -> Result<(), ServiceError> {
        raw::metrics::gauge_add(name, labels, value)
    }

    pub(crate) fn metrics_histogram_observe(
        name: &str,
        labels: &[String],
        value: f64,
    ) -> Result<(), ServiceError> {
        raw::metrics::histogram_observe(name, labels, value)
    }

    pub(crate) fn trace_start_span(name: &str, parent: Option<u32>) -> Result<u32, ServiceError> {
        raw::trace::start_span(name, parent)
    }

    pub(crate) fn trace_set_attribute(
        span: u32,
        key: &str,
        value: &str,
    ) -> Result<(), ServiceError> {
        raw::trace::set_attribute(span, key, value)
    }

    pub(crate) fn trace_end_span(span: u32, error: Option<&str>) -> Result<(), ServiceError> {
        raw::trace::end_span(span, error)
    }

    pub(crate) fn response_write(chunk: &[u8]) -> Result<(), ServiceError> {
        raw::response::write(chunk)
    }

    pub(crate) fn call(
        target: &str,
        request: &crate::Request,
    ) -> Result<crate::Response, raw::plugins::CallError> {
        raw::plugins::call(target, request)
    }

    pub(crate) fn call_capability(
        capability: &str,
        request: &crate::Request,
    ) -> Result<crate::Response, raw::plugins::CallError> {
        raw::plugins::call_capability(capability, request)
    }
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
mod routes {
    use crate::ServiceError;
    use crate::log::Level;
    use crate::metrics::Kind;
    use crate::testing::with_host;

    pub(crate) fn log(level: Level, message: &str) -> Result<(), ServiceError> {
        with_host(|host| host.log(level, message))
    }

    pub(crate) fn config_get(key: &str) -> Result<Option<String>, ServiceError> {
        with_host(|host| host.config_get(key))
    }

    pub(crate) fn config_get_all() -> Result<Vec<(String, String)>, ServiceError> {
        with_host(|host| host.config_get_all())
    }

    pub(crate) fn config_get_json() -> Result<String, ServiceError> {
        with_host(|host| host.config_get_json())
    }

    pub(crate) fn kv_get(key: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        with_host(|host| host.kv_get(key))
    }

    pub(crate) fn kv_set(key: &str, value: &[u8]) -> Result<(), ServiceError> {
        with_host(|host| host.kv_set(key, value))
    }

    pub(crate) fn kv_delete(key: &str) -> Result<bool, ServiceError> {
        with_host(|host| host.kv_delete(key))
    }

    pub(crate) fn kv_list_keys(prefix: &str) -> Result<Vec<String>, ServiceError> {
        with_host(|host| host.kv_list_keys(prefix))
    }

    pub(crate) fn kv_increment(key: &str, delta: i64) -> Result<i64, ServiceError> {
        with_host(|host| host.kv_increment(key, delta))
    }

    pub(crate) fn kv_compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, ServiceError> {
        with_host(|host| host.kv_compare_and_swap(key, expected, new))
    }

    pub(crate) fn kv_set_with_ttl(
        key: &str,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<(), ServiceError> {
        with_host(|host| host.kv_set_with_ttl(key, value, ttl_ms))
    }

    pub(crate) fn kv_get_many(keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, ServiceError> {
        with_host(|host| host.kv_get_many(keys))
    }

    pub(crate) fn kv_set_many(entries: &[(String, Vec<u8>)]) -> Result<(), ServiceError> {
        with_host(|host| host.kv_set_many(entries))
    }

    pub(crate) fn kv_list_keys_page(
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<String>, Option<String>), ServiceError> {
        with_host(|host| host.kv_list_keys_page(prefix, after, limit))
    }

    pub(crate) fn publish(topic: &str, payload: &[u8]) -> Result<(), ServiceError> {
        with_host(|host| host.publish(topic, payload))
    }

    pub(crate) fn metrics_counter_add(
        name: &str,
        labels: &[String],
        value: f64,
    ) -> Result<(), ServiceError> {
        with_host(|host| host.metric(Kind::Counter, name, labels, value))
    }

    pub(crate) fn metrics_gauge_set(
        name: &str,
        labels: &[String],
        value: f64,
    ) -> Result<(), ServiceError> {
        with_host(|host| host.metric(Kind::Gauge, name, labels, value))
    }

    pub(crate) fn metrics_gauge_add(
        name: &str,
        labels: &[String],
        value: f64,
    ) -> Result<(), ServiceError> {
        with_host(|host| host.gauge_add(name, labels, value))
    }

    pub(crate) fn metrics_histogram_observe(
        name: &str,
        labels: &[String],
        value: f64,
    ) -> Result<(), ServiceError> {
        with_host(|host| host.metric(Kind::Histogram, name, labels, value))
    }

    pub(crate) fn trace_start_span(name: &str, parent: Option<u32>) -> Result<u32, ServiceError> {
        with_host(|host| host.start_span(name, parent))
    }

    pub(crate) fn trace_set_attribute(
        span: u32,
        key: &str,
        value: &str,
    ) -> Result<(), ServiceError> {
        with_host(|host| host.set_attribute(span, key, value))
    }

    pub(crate) fn trace_end_span(span: u32, error: Option<&str>) -> Result<(), ServiceError> {
        with_host(|host| host.end_span(span, error))
    }

    pub(crate) fn response_write(chunk: &[u8]) -> Result<(), ServiceError> {
        with_host(|host| host.write_response(chunk))
    }

    pub(crate) fn call(
        target: &str,
        request: &crate::Request,
    ) -> Result<crate::Response, crate::plugins::CallError> {
        crate::testing::call(target, request)
    }

    pub(crate) fn call_capability(
        capability: &str,
        request: &crate::Request,
    ) -> Result<crate::Response, crate::plugins::CallError> {
        crate::testing::call_capability(capability, request)
    }
}

pub(crate) use routes::*;
