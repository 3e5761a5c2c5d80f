"""The layers of the Call path, one concept each, all with the signature
``layer(context, next)`` (see ``sidecar.core.calls.context``). ``stack`` puts them in
order, once per route."""
