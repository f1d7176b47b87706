"""Sans-io protocol parsers: bytes in, events out. Nothing here touches a socket."""
