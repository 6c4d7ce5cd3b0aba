//! The `events` service. Until the event bus lands publishing answers
//! `denied`, so plugins that import it link and get a typed refusal.

use wasmtime::component::{HasData, Linker};

use crate::contract::{ServiceError, interfaces};
use crate::store::StoreState;

/// Per-store state of the `events` service.
pub(crate) struct EventsState;

impl interfaces::events::Host for EventsState {
    fn publish(&mut self, topic: String, _payload: Vec<u8>) -> Result<(), ServiceError> {
        Err(ServiceError::Denied(format!(
            "publishing to `{topic}` was not granted to this plugin"
        )))
    }
}

struct EventsService;

impl HasData for EventsService {
    type Data<'a> = &'a mut EventsState;
}

pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    interfaces::events::add_to_linker::<StoreState, EventsService>(linker, |state| {
        &mut state.events
    })
}
