"""The one exception type of `ht_data` for problems the user can fix."""


class DataError(ValueError):
  """A user-caused data problem (missing or corrupt files, impossible episode settings).

  The message is one sentence that names the offending thing and says how to fix it.
  It subclasses ValueError so callers that already catch bad values keep working.
  """
