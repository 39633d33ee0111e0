"""One module per space kind, each with one `base.SpaceKindRules` subclass. `search_spaces.kinds` imports
every module here (and so registers its kind): a new kind is a new file here."""
