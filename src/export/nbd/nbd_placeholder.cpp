// NBD server: sources land here.
