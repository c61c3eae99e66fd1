"""The shared vocabulary: core types, the error tree, datatypes, timing names. No wire format."""
