from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompressionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVALID: _ClassVar[CompressionType]
    ZSTD: _ClassVar[CompressionType]

class ActionName(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVALID_NAME: _ClassVar[ActionName]
    SERVER_TWEET_FAV: _ClassVar[ActionName]
    SERVER_TWEET_REPLY: _ClassVar[ActionName]
    SERVER_TWEET_RETWEET: _ClassVar[ActionName]
    CLIENT_TWEET_PHOTO_EXPAND: _ClassVar[ActionName]
    CLIENT_TWEET_CLICK: _ClassVar[ActionName]
    CLIENT_TWEET_CLICK_PROFILE: _ClassVar[ActionName]
    CLIENT_TWEET_VIDEO_QUALITY_VIEW: _ClassVar[ActionName]
    CLIENT_TWEET_SHARE: _ClassVar[ActionName]
    CLIENT_TWEET_CLICK_SEND_VIA_DIRECT_MESSAGE: _ClassVar[ActionName]
    CLIENT_TWEET_SHARE_VIA_COPY_LINK: _ClassVar[ActionName]
    CLIENT_TWEET_RECAP_DWELLED: _ClassVar[ActionName]
    SERVER_TWEET_QUOTE: _ClassVar[ActionName]
    CLIENT_QUOTED_TWEET_CLICK: _ClassVar[ActionName]
    CLIENT_TWEET_FOLLOW_AUTHOR: _ClassVar[ActionName]
    CLIENT_TWEET_NOT_INTERESTED_IN: _ClassVar[ActionName]
    CLIENT_TWEET_BLOCK_AUTHOR: _ClassVar[ActionName]
    CLIENT_TWEET_MUTE_AUTHOR: _ClassVar[ActionName]
    CLIENT_TWEET_REPORT: _ClassVar[ActionName]
    CLIENT_TWEET_LIVE_STREAM_REPLY: _ClassVar[ActionName]
    LLM_JUDGE_RELEVANT_TO_SEARCH: _ClassVar[ActionName]
    LLM_JUDGE_NOT_RELEVANT_TO_SEARCH: _ClassVar[ActionName]
    CLIENT_NOTIFICATION_SETTING_OPT_OUT: _ClassVar[ActionName]
    ADS_PIXEL_FIRE: _ClassVar[ActionName]
    ADS_LONG_DWELL_AND_PIXEL_FIRE: _ClassVar[ActionName]
    P_LONG_DWELL_AND_PIXEL_FIRE: _ClassVar[ActionName]
    ADS_ATTRIBUTED_MACT_MMP_CLICK_INSTALL: _ClassVar[ActionName]
    ADS_ATTRIBUTED_MACT_MMP_VIEW_INSTALL: _ClassVar[ActionName]
    ADS_MMP_CLICK: _ClassVar[ActionName]

class ContinuousActionName(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOME_PROFILE_VISIT_SECS: _ClassVar[ContinuousActionName]
    DWELL_TIME: _ClassVar[ContinuousActionName]
    CLICK_DWELL_TIME: _ClassVar[ContinuousActionName]
    HOME_VIDEO_CONTINUATION_SECS: _ClassVar[ContinuousActionName]
    BRIDGE_PROBABILITY: _ClassVar[ContinuousActionName]
    ADS_WEB_CT_PURCHASE_VALUE: _ClassVar[ContinuousActionName]
    WEB_CONV_VALUE_USD: _ClassVar[ContinuousActionName]
    WEB_CONV_VALUE_RATIO: _ClassVar[ContinuousActionName]

class ProductSurface(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRODUCT_SURFACE_UNKNOWN: _ClassVar[ProductSurface]
    PRODUCT_SURFACE_HOME_TIMELINE_RANKING: _ClassVar[ProductSurface]
    PRODUCT_SURFACE_HOME_TIMELINE_RANKED_FOLLOWING: _ClassVar[ProductSurface]
INVALID: CompressionType
ZSTD: CompressionType
INVALID_NAME: ActionName
SERVER_TWEET_FAV: ActionName
SERVER_TWEET_REPLY: ActionName
SERVER_TWEET_RETWEET: ActionName
CLIENT_TWEET_PHOTO_EXPAND: ActionName
CLIENT_TWEET_CLICK: ActionName
CLIENT_TWEET_CLICK_PROFILE: ActionName
CLIENT_TWEET_VIDEO_QUALITY_VIEW: ActionName
CLIENT_TWEET_SHARE: ActionName
CLIENT_TWEET_CLICK_SEND_VIA_DIRECT_MESSAGE: ActionName
CLIENT_TWEET_SHARE_VIA_COPY_LINK: ActionName
CLIENT_TWEET_RECAP_DWELLED: ActionName
SERVER_TWEET_QUOTE: ActionName
CLIENT_QUOTED_TWEET_CLICK: ActionName
CLIENT_TWEET_FOLLOW_AUTHOR: ActionName
CLIENT_TWEET_NOT_INTERESTED_IN: ActionName
CLIENT_TWEET_BLOCK_AUTHOR: ActionName
CLIENT_TWEET_MUTE_AUTHOR: ActionName
CLIENT_TWEET_REPORT: ActionName
CLIENT_TWEET_LIVE_STREAM_REPLY: ActionName
LLM_JUDGE_RELEVANT_TO_SEARCH: ActionName
LLM_JUDGE_NOT_RELEVANT_TO_SEARCH: ActionName
CLIENT_NOTIFICATION_SETTING_OPT_OUT: ActionName
ADS_PIXEL_FIRE: ActionName
ADS_LONG_DWELL_AND_PIXEL_FIRE: ActionName
P_LONG_DWELL_AND_PIXEL_FIRE: ActionName
ADS_ATTRIBUTED_MACT_MMP_CLICK_INSTALL: ActionName
ADS_ATTRIBUTED_MACT_MMP_VIEW_INSTALL: ActionName
ADS_MMP_CLICK: ActionName
HOME_PROFILE_VISIT_SECS: ContinuousActionName
DWELL_TIME: ContinuousActionName
CLICK_DWELL_TIME: ContinuousActionName
HOME_VIDEO_CONTINUATION_SECS: ContinuousActionName
BRIDGE_PROBABILITY: ContinuousActionName
ADS_WEB_CT_PURCHASE_VALUE: ContinuousActionName
WEB_CONV_VALUE_USD: ContinuousActionName
WEB_CONV_VALUE_RATIO: ContinuousActionName
PRODUCT_SURFACE_UNKNOWN: ProductSurface
PRODUCT_SURFACE_HOME_TIMELINE_RANKING: ProductSurface
PRODUCT_SURFACE_HOME_TIMELINE_RANKED_FOLLOWING: ProductSurface

class PredictNextActionsRequest(_message.Message):
    __slots__ = ("sequences", "candidateSets", "returnLogprob", "topLogprobsNum", "metadata", "returnLogMap", "requestedActionIndices", "returnCandidateTweetIdOnly", "columnar_sequences", "requestedContinuousActionIndices", "returnLogitsList")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATESETS_FIELD_NUMBER: _ClassVar[int]
    RETURNLOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOPLOGPROBSNUM_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    RETURNLOGMAP_FIELD_NUMBER: _ClassVar[int]
    REQUESTEDACTIONINDICES_FIELD_NUMBER: _ClassVar[int]
    RETURNCANDIDATETWEETIDONLY_FIELD_NUMBER: _ClassVar[int]
    COLUMNAR_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    REQUESTEDCONTINUOUSACTIONINDICES_FIELD_NUMBER: _ClassVar[int]
    RETURNLOGITSLIST_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[UserActionSequence]
    candidateSets: _containers.RepeatedCompositeFieldContainer[CandidateSet]
    returnLogprob: bool
    topLogprobsNum: int
    metadata: str
    returnLogMap: bool
    requestedActionIndices: _containers.RepeatedScalarFieldContainer[int]
    returnCandidateTweetIdOnly: bool
    columnar_sequences: _containers.RepeatedScalarFieldContainer[bytes]
    requestedContinuousActionIndices: _containers.RepeatedScalarFieldContainer[int]
    returnLogitsList: bool
    def __init__(self, sequences: _Optional[_Iterable[_Union[UserActionSequence, _Mapping]]] = ..., candidateSets: _Optional[_Iterable[_Union[CandidateSet, _Mapping]]] = ..., returnLogprob: _Optional[bool] = ..., topLogprobsNum: _Optional[int] = ..., metadata: _Optional[str] = ..., returnLogMap: _Optional[bool] = ..., requestedActionIndices: _Optional[_Iterable[int]] = ..., returnCandidateTweetIdOnly: _Optional[bool] = ..., columnar_sequences: _Optional[_Iterable[bytes]] = ..., requestedContinuousActionIndices: _Optional[_Iterable[int]] = ..., returnLogitsList: _Optional[bool] = ...) -> None: ...

class UserActionSequence(_message.Message):
    __slots__ = ("userId", "userActions", "userActionsData")
    USERID_FIELD_NUMBER: _ClassVar[int]
    USERACTIONS_FIELD_NUMBER: _ClassVar[int]
    USERACTIONSDATA_FIELD_NUMBER: _ClassVar[int]
    userId: int
    userActions: _containers.RepeatedCompositeFieldContainer[UserAction]
    userActionsData: UserActionSequenceDataContainer
    def __init__(self, userId: _Optional[int] = ..., userActions: _Optional[_Iterable[_Union[UserAction, _Mapping]]] = ..., userActionsData: _Optional[_Union[UserActionSequenceDataContainer, _Mapping]] = ...) -> None: ...

class UserActionSequenceDataContainer(_message.Message):
    __slots__ = ("compressedUserActions", "orderedUserActionList", "orderedAggregatedUserActionsList")
    COMPRESSEDUSERACTIONS_FIELD_NUMBER: _ClassVar[int]
    ORDEREDUSERACTIONLIST_FIELD_NUMBER: _ClassVar[int]
    ORDEREDAGGREGATEDUSERACTIONSLIST_FIELD_NUMBER: _ClassVar[int]
    compressedUserActions: CompressedUserActionSequence
    orderedUserActionList: UserActionList
    orderedAggregatedUserActionsList: AggregatedUserActionList
    def __init__(self, compressedUserActions: _Optional[_Union[CompressedUserActionSequence, _Mapping]] = ..., orderedUserActionList: _Optional[_Union[UserActionList, _Mapping]] = ..., orderedAggregatedUserActionsList: _Optional[_Union[AggregatedUserActionList, _Mapping]] = ...) -> None: ...

class CompressedUserActionSequence(_message.Message):
    __slots__ = ("data", "compression_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    compression_type: CompressionType
    def __init__(self, data: _Optional[bytes] = ..., compression_type: _Optional[_Union[CompressionType, str]] = ...) -> None: ...

class UserActionList(_message.Message):
    __slots__ = ("user_actions",)
    USER_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    user_actions: _containers.RepeatedCompositeFieldContainer[UserAction]
    def __init__(self, user_actions: _Optional[_Iterable[_Union[UserAction, _Mapping]]] = ...) -> None: ...

class AggregatedUserActionList(_message.Message):
    __slots__ = ("aggregatedUserActions",)
    AGGREGATEDUSERACTIONS_FIELD_NUMBER: _ClassVar[int]
    aggregatedUserActions: _containers.RepeatedCompositeFieldContainer[AggregatedUserAction]
    def __init__(self, aggregatedUserActions: _Optional[_Iterable[_Union[AggregatedUserAction, _Mapping]]] = ...) -> None: ...

class UserAction(_message.Message):
    __slots__ = ("userId", "tweetInfo", "actionInfo")
    USERID_FIELD_NUMBER: _ClassVar[int]
    TWEETINFO_FIELD_NUMBER: _ClassVar[int]
    ACTIONINFO_FIELD_NUMBER: _ClassVar[int]
    userId: int
    tweetInfo: TweetInfo
    actionInfo: ActionInfo
    def __init__(self, userId: _Optional[int] = ..., tweetInfo: _Optional[_Union[TweetInfo, _Mapping]] = ..., actionInfo: _Optional[_Union[ActionInfo, _Mapping]] = ...) -> None: ...

class AggregatedUserAction(_message.Message):
    __slots__ = ("userId", "tweetInfo", "actions")
    USERID_FIELD_NUMBER: _ClassVar[int]
    TWEETINFO_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    userId: int
    tweetInfo: TweetInfo
    actions: _containers.RepeatedCompositeFieldContainer[ActionInfo]
    def __init__(self, userId: _Optional[int] = ..., tweetInfo: _Optional[_Union[TweetInfo, _Mapping]] = ..., actions: _Optional[_Iterable[_Union[ActionInfo, _Mapping]]] = ...) -> None: ...

class ActionInfo(_message.Message):
    __slots__ = ("actionName", "userActionMeta")
    ACTIONNAME_FIELD_NUMBER: _ClassVar[int]
    USERACTIONMETA_FIELD_NUMBER: _ClassVar[int]
    actionName: ActionName
    userActionMeta: UserActionMeta
    def __init__(self, actionName: _Optional[_Union[ActionName, str]] = ..., userActionMeta: _Optional[_Union[UserActionMeta, _Mapping]] = ...) -> None: ...

class UserActionMeta(_message.Message):
    __slots__ = ("productSurface",)
    PRODUCTSURFACE_FIELD_NUMBER: _ClassVar[int]
    productSurface: ProductSurface
    def __init__(self, productSurface: _Optional[_Union[ProductSurface, str]] = ...) -> None: ...

class TweetInfo(_message.Message):
    __slots__ = ("tweetId", "authorId")
    TWEETID_FIELD_NUMBER: _ClassVar[int]
    AUTHORID_FIELD_NUMBER: _ClassVar[int]
    tweetId: int
    authorId: int
    def __init__(self, tweetId: _Optional[int] = ..., authorId: _Optional[int] = ...) -> None: ...

class CandidateSet(_message.Message):
    __slots__ = ("userId", "candidates", "productSurface")
    USERID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PRODUCTSURFACE_FIELD_NUMBER: _ClassVar[int]
    userId: int
    candidates: _containers.RepeatedCompositeFieldContainer[TweetInfo]
    productSurface: ProductSurface
    def __init__(self, userId: _Optional[int] = ..., candidates: _Optional[_Iterable[_Union[TweetInfo, _Mapping]]] = ..., productSurface: _Optional[_Union[ProductSurface, str]] = ...) -> None: ...

class PredictNextActionsResponse(_message.Message):
    __slots__ = ("distributionSets", "servingPodName", "servingNodeName")
    DISTRIBUTIONSETS_FIELD_NUMBER: _ClassVar[int]
    SERVINGPODNAME_FIELD_NUMBER: _ClassVar[int]
    SERVINGNODENAME_FIELD_NUMBER: _ClassVar[int]
    distributionSets: _containers.RepeatedCompositeFieldContainer[CandidateDistributionSet]
    servingPodName: str
    servingNodeName: str
    def __init__(self, distributionSets: _Optional[_Iterable[_Union[CandidateDistributionSet, _Mapping]]] = ..., servingPodName: _Optional[str] = ..., servingNodeName: _Optional[str] = ...) -> None: ...

class CandidateDistributionSet(_message.Message):
    __slots__ = ("userId", "candidateDistributions", "checkpointPath")
    USERID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATEDISTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTPATH_FIELD_NUMBER: _ClassVar[int]
    userId: int
    candidateDistributions: _containers.RepeatedCompositeFieldContainer[NextActionDistribution]
    checkpointPath: str
    def __init__(self, userId: _Optional[int] = ..., candidateDistributions: _Optional[_Iterable[_Union[NextActionDistribution, _Mapping]]] = ..., checkpointPath: _Optional[str] = ...) -> None: ...

class NextActionDistribution(_message.Message):
    __slots__ = ("candidate", "logits", "topLogProbs", "indexToLogits", "continuousActionsValues", "indexToContinuousValues", "requestedActionLogits")
    class IndexToLogitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    class IndexToContinuousValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    TOPLOGPROBS_FIELD_NUMBER: _ClassVar[int]
    INDEXTOLOGITS_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUSACTIONSVALUES_FIELD_NUMBER: _ClassVar[int]
    INDEXTOCONTINUOUSVALUES_FIELD_NUMBER: _ClassVar[int]
    REQUESTEDACTIONLOGITS_FIELD_NUMBER: _ClassVar[int]
    candidate: TweetInfo
    logits: _containers.RepeatedScalarFieldContainer[float]
    topLogProbs: _containers.RepeatedScalarFieldContainer[float]
    indexToLogits: _containers.ScalarMap[int, float]
    continuousActionsValues: _containers.RepeatedScalarFieldContainer[float]
    indexToContinuousValues: _containers.ScalarMap[int, float]
    requestedActionLogits: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, candidate: _Optional[_Union[TweetInfo, _Mapping]] = ..., logits: _Optional[_Iterable[float]] = ..., topLogProbs: _Optional[_Iterable[float]] = ..., indexToLogits: _Optional[_Mapping[int, float]] = ..., continuousActionsValues: _Optional[_Iterable[float]] = ..., indexToContinuousValues: _Optional[_Mapping[int, float]] = ..., requestedActionLogits: _Optional[_Iterable[float]] = ...) -> None: ...

class ReloadModelRequest(_message.Message):
    __slots__ = ("do_reload", "copy_urls", "target_prefix")
    DO_RELOAD_FIELD_NUMBER: _ClassVar[int]
    COPY_URLS_FIELD_NUMBER: _ClassVar[int]
    TARGET_PREFIX_FIELD_NUMBER: _ClassVar[int]
    do_reload: bool
    copy_urls: _containers.RepeatedScalarFieldContainer[str]
    target_prefix: str
    def __init__(self, do_reload: _Optional[bool] = ..., copy_urls: _Optional[_Iterable[str]] = ..., target_prefix: _Optional[str] = ...) -> None: ...

class ReloadModelResponse(_message.Message):
    __slots__ = ("reload_in_progress", "current_checkpoint_timestamp", "serving_prefix", "peer_ready")
    RELOAD_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CHECKPOINT_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SERVING_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PEER_READY_FIELD_NUMBER: _ClassVar[int]
    reload_in_progress: bool
    current_checkpoint_timestamp: float
    serving_prefix: str
    peer_ready: bool
    def __init__(self, reload_in_progress: _Optional[bool] = ..., current_checkpoint_timestamp: _Optional[float] = ..., serving_prefix: _Optional[str] = ..., peer_ready: _Optional[bool] = ...) -> None: ...
