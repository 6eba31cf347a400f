from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ("readyOnly",)
    READYONLY_FIELD_NUMBER: _ClassVar[int]
    readyOnly: bool
    def __init__(self, readyOnly: _Optional[bool] = ...) -> None: ...

class RuntimeModel(_message.Message):
    __slots__ = ("modelId", "state", "sizeInBytes", "modelType", "modelPath", "reason")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[RuntimeModel.State]
        LOADING: _ClassVar[RuntimeModel.State]
        READY: _ClassVar[RuntimeModel.State]
        FAILED: _ClassVar[RuntimeModel.State]
        UNAVAILABLE: _ClassVar[RuntimeModel.State]
    UNKNOWN: RuntimeModel.State
    LOADING: RuntimeModel.State
    READY: RuntimeModel.State
    FAILED: RuntimeModel.State
    UNAVAILABLE: RuntimeModel.State
    MODELID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SIZEINBYTES_FIELD_NUMBER: _ClassVar[int]
    MODELTYPE_FIELD_NUMBER: _ClassVar[int]
    MODELPATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    modelId: str
    state: RuntimeModel.State
    sizeInBytes: int
    modelType: str
    modelPath: str
    reason: str
    def __init__(self, modelId: _Optional[str] = ..., state: _Optional[_Union[RuntimeModel.State, str]] = ..., sizeInBytes: _Optional[int] = ..., modelType: _Optional[str] = ..., modelPath: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[RuntimeModel]
    def __init__(self, models: _Optional[_Iterable[_Union[RuntimeModel, _Mapping]]] = ...) -> None: ...
