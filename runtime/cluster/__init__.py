"""Ray, as the runtime uses it: attaching the driver, placing actors, handling them together."""
