"""Wire codecs: every byte format infergw reads or writes, converted to and from the vocabulary."""
