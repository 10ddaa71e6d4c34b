// FUSE export: sources land here.
