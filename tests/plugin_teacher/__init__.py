"""A teacher package of a user's own, outside omnimill: `--teacher plugin_teacher.spots:Spots`.

It brings a field kind omnimill does not know (`spots`), the sequence serializer that reads it and the audit
picture that draws it, and needs no edit of omnimill. Installed for real, a package like this one declares
its teacher as an entry point, so that stores and tokenizers naming it may import it (registry.stored_teacher):

    [project.entry-points."omnimill.teachers"]
    spots = "plugin_teacher.spots:Spots"

tests/test_plugin_teacher.py installs it that way (a dist-info folder on sys.path) and drives it end to end.
"""
