//! An announce-only BGP speaker: it sends the routes it is given to its peers,
//! one path per next hop with ADD-PATH, and never installs what it receives.
