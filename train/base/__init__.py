"""The ground floor: exit codes and typed errors, atomic files, the output-folder lock, text helpers
(wrapping, did-you-mean, flattening), the project's paths. The standard library only: every layer,
the supervisor too, may import it."""
